"""Settings, read once from the environment (and an optional .env file).

Every setting has an environment variable of the same name. An invalid value stops the
process at start with a message naming the setting (see ``load_settings``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(SystemExit):
    """Raised (and exits 2) when a setting is invalid; the message names the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str | None = Field(
        default=None, description="Postgres URL; unset means the embedded server under QUIRE_HOME"
    )
    temporal_address: str | None = Field(
        default=None, description="host:port of a Temporal frontend; unset means the embedded dev server"
    )
    temporal_namespace: str = "default"
    temporal_task_queue: str = "quire"
    openai_base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint")
    openai_api_key: SecretStr | None = None
    quire_model: str = "gemma-3-270m"
    quire_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="other models a job may ask for, comma-separated; QUIRE_MODEL is always allowed",
    )
    quire_home: Path = Path(".quire")
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    temporal_port: int = Field(default=7233, ge=1, le=65535)
    temporal_ui_port: int = Field(default=8233, ge=1, le=65535)
    llm_port: int = Field(default=8081, ge=1, le=65535)
    quire_max_input_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    quire_llm_timeout_s: float = Field(default=300.0, gt=0)
    quire_log_level: str = "info"
    quire_llm_concurrency: int | None = Field(
        default=None, ge=1, le=1024, description="model calls at once per worker; unset: 1 for the local model, else 16"
    )
    quire_llm_calls_per_second: float | None = Field(
        default=None, gt=0, description="model calls per second across all workers (Temporal enforces it)"
    )
    quire_prompt_style: Literal["auto", "instruct", "document"] = Field(
        default="auto", description="auto: 'document' for the local base model, 'instruct' otherwise"
    )
    quire_outage_window_s: float = Field(
        default=24 * 3600, gt=0, description="how long a job rides out the database or Temporal being down"
    )
    quire_retry_max_interval_s: float = Field(
        default=30.0, gt=0, description="the longest wait between two attempts of a step (the backoff's cap)"
    )
    quire_temporal_key: SecretStr | None = Field(
        default=None, description="32 bytes (base64) encrypting what Temporal stores; unset: QUIRE_HOME/temporal.key"
    )

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("temporal_address")
    @classmethod
    def _check_temporal(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be host:port")
        return v

    @field_validator("quire_temporal_key")
    @classmethod
    def _check_temporal_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        from services.codec import parse_key  # (lazily: the CLI reads settings and needs no crypto)

        parse_key(v.get_secret_value())  # the message never shows the value
        return v

    @field_validator("quire_models", mode="before")
    @classmethod
    def _split_models(cls, v: object) -> object:
        if isinstance(v, str):
            return [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("openai_base_url")
    @classmethod
    def _check_base_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return v.rstrip("/")

    @property
    def home(self) -> Path:
        return self.quire_home.expanduser().resolve()

    @property
    def allowed_models(self) -> list[str]:
        """The models a job may name: the configured one first, then QUIRE_MODELS."""
        return list(dict.fromkeys([self.quire_model, *self.quire_models]))

    @property
    def uses_local_model(self) -> bool:
        return self.openai_base_url is None and self.openai_api_key is None

    @property
    def prompt_style(self) -> str:
        if self.quire_prompt_style != "auto":
            return self.quire_prompt_style
        return "document" if self.uses_local_model else "instruct"

    @property
    def llm_concurrency(self) -> int:
        # The local server on 2 cores serves one call at a time well; a hosted endpoint many.
        if self.quire_llm_concurrency is not None:
            return self.quire_llm_concurrency
        return 1 if self.uses_local_model else 16

    def secrets(self) -> list[str]:
        """Values that must never appear in clear in logs or audit rows."""
        out = []
        for secret in (self.openai_api_key, self.quire_temporal_key):
            if secret is not None and secret.get_secret_value():
                out.append(secret.get_secret_value())
        return out

    def temporal_key(self) -> bytes:
        """The key of the Temporal payload codec (services.codec): the setting, else QUIRE_HOME's."""
        from services.codec import load_key

        return load_key(self.quire_temporal_key.get_secret_value() if self.quire_temporal_key else None, self.home)


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "?"
            lines.append(f"invalid setting {name}: {err['msg']}")
        raise SettingsError("\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
