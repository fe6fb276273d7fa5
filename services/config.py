"""Settings, read once from the environment (and an optional .env file).

Every setting has an environment variable of the same name. An invalid value stops the
process at start with a message naming the setting (see ``load_settings``).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from secrets import token_urlsafe
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.checkpoint import SignerKey, VerifierKey
from core.cost import Price
from core.sealing import new_key
from core.webhooks import RetrySchedule, WebhookPolicy, parse_networks
from db.witness import WitnessClient, parse_witnesses

SECRET_KEY_FILE = "secret.key"
OPERATOR_TOKEN_FILE = "operator.token"


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
    quire_judge_model: str | None = Field(
        default=None,
        description="the model of the story memory and its judge (the memory and seam calls); unset: the job's model",
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
    quire_db_pool_size: int | None = Field(
        default=None,
        ge=1,
        le=500,
        description="database connections a worker keeps open (20 more while busy); unset: 10, or half "
        "QUIRE_LLM_CONCURRENCY when that is more",
    )
    quire_gate_process: bool = Field(
        default=True,
        description="run the degeneration gate in a process of the worker's own, off its event loop "
        "(false: on the event loop, one process in all)",
    )
    quire_llm_calls_per_second: float | None = Field(
        default=None, gt=0, description="model calls per second across all workers (Temporal enforces it)"
    )
    quire_worker_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="port of the worker's Prometheus metrics; unset or 0: none (quire up uses 9464)",
    )
    quire_worker_metrics_host: str = Field(default="127.0.0.1", description="address the worker's metrics listen on")
    quire_operator_token: SecretStr | None = Field(
        default=None,
        description="operators' token for the codec server (/codec: the Temporal UI decodes through it); "
        "unset: QUIRE_HOME/operator.token if `quire up` made one, else the codec server is off",
    )
    quire_codec_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins of the Temporal UI allowed to call /codec (CORS), comma-separated; "
        "unset: the embedded UI's (http://127.0.0.1:TEMPORAL_UI_PORT, http://localhost:TEMPORAL_UI_PORT)",
    )
    quire_metrics_token: SecretStr | None = Field(
        default=None, description="if set, GET /metrics on the API asks for it as a Bearer token"
    )
    quire_metrics_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="CIDRs, comma-separated: without QUIRE_METRICS_TOKEN, the only clients /metrics answers",
    )
    # What one caller may ask of an API process (api/limits.py)
    quire_rate_limit: str = Field(default="1200/minute", description="requests per API key per API process")
    quire_auth_failure_limit: str = Field(
        default="60/minute", description="requests without a valid key per client address per API process"
    )
    quire_max_streams: int = Field(default=1000, ge=1, description="live audit streams open at once per API process")
    quire_max_streams_per_user: int = Field(default=16, ge=1, description="live audit streams open at once per user")
    quire_prompt_style: Literal["auto", "instruct", "document"] = Field(
        default="auto", description="auto: 'document' for the local base model, 'instruct' otherwise"
    )
    # Cost and webhooks (README: Integrators)
    quire_prices: Annotated[dict[str, Price], NoDecode] = Field(
        default_factory=dict,
        description='JSON: {"model": {"input": 0.15, "cached_input": 0.075, "output": 0.6}} (USD per 1M tokens)',
    )
    quire_secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key(s), comma-separated (the first seals); unset: QUIRE_HOME/secret.key, made once",
    )
    quire_public_url: str | None = Field(default=None, description="the API's URL as webhook receivers reach it")
    quire_webhook_allow_loopback: bool = Field(
        default=False, description="webhooks to loopback addresses (the operator's explicit choice, off by default)"
    )
    quire_webhook_allow_private: bool = False
    quire_webhook_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CIDRs, comma-separated: when set, the only webhook targets allowed"
    )
    quire_webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    quire_webhook_first_retry_s: float = Field(default=5.0, gt=0)
    quire_webhook_attempts: int = Field(default=10, ge=1, le=50)
    quire_outage_window_s: float = Field(
        default=24 * 3600, gt=0, description="how long a job rides out the database or Temporal being down"
    )
    quire_retry_max_interval_s: float = Field(
        default=30.0, gt=0, description="the longest wait between two attempts of a step (the backoff's cap)"
    )
    # Worker Versioning (README: Deploying new code)
    quire_build_id: str = Field(
        default="local",
        min_length=1,
        max_length=200,
        pattern=r"^[^\s.]+$",
        description="the worker's build (its Worker Deployment Version, in the deployment named after "
        "TEMPORAL_TASK_QUEUE): one per release where several run side by side",
    )
    quire_start_worker: bool = Field(
        default=True, description="`quire up` starts a worker (false: every other part, say while repairing a restore)"
    )
    quire_worker_versioning: bool = Field(
        default=True, description="declare the build to Temporal (Worker Versioning); false: an unversioned worker"
    )
    quire_worker_promote: bool = Field(
        default=True,
        description="on start, make this build the current one (new jobs start on it) unless it was current before",
    )
    quire_temporal_key: SecretStr | None = Field(
        default=None,
        description="32 bytes (base64) encrypting what Temporal stores, several comma-separated while rotating "
        "(the first encrypts); unset: QUIRE_HOME/temporal.key",
    )
    # The audit log's signed checkpoints (README: Verifying the audit log)
    quire_audit_key: SecretStr | None = Field(
        default=None, description="the checkpoint signing key (PRIVATE+KEY+...); unset: QUIRE_HOME/audit.key, made once"
    )
    quire_checkpoint_every: int = Field(
        default=1000, ge=1, le=1_000_000, description="sign a checkpoint at least every this many events"
    )
    # C2SP tlog-witnesses each checkpoint goes to (README: Verifying the audit log); `quire up`: its own
    quire_witness_url: str | None = Field(default=None, description="their URLs (submission prefixes), comma-separated")
    quire_witness_key: str | None = Field(default=None, description="their public keys, comma-separated, in order")
    quire_witness_quorum: int | None = Field(default=None, ge=1, description="cosignatures needed; unset: all")
    quire_witness_port: int = Field(default=7380, ge=1, le=65535, description="`quire up`'s own witness's port")

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
        from services.codec import parse_keys  # (lazily: the CLI reads settings and needs no crypto)

        parse_keys(v.get_secret_value())  # the message never shows the value
        return v

    @field_validator("quire_models", mode="before")
    @classmethod
    def _split_models(cls, v: object) -> object:
        if isinstance(v, str):
            return [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("quire_prices", mode="before")
    @classmethod
    def _parse_prices(cls, v: object) -> object:
        if isinstance(v, str):
            return json.loads(v) if v.strip() else {}
        return v

    @field_validator("quire_codec_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str):
            v = [o.strip().rstrip("/") for o in v.split(",") if o.strip()]
        for origin in v:  # type: ignore[attr-defined]
            if not str(origin).startswith(("http://", "https://")) or str(origin).count("/") != 2:
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return v

    @field_validator("quire_rate_limit", "quire_auth_failure_limit")
    @classmethod
    def _check_rate(cls, v: str) -> str:
        from limits import parse

        try:
            parse(v)
        except ValueError:
            raise ValueError(f"must read like '600/minute' or '10/second', not {v!r}") from None
        return v

    @field_validator("quire_webhook_networks", "quire_metrics_networks", mode="before")
    @classmethod
    def _split_networks(cls, v: object) -> object:
        if isinstance(v, str):
            v = [n.strip() for n in v.split(",") if n.strip()]
        parse_networks(v)  # type: ignore[arg-type]  # a ValueError names the bad one
        return v

    @field_validator("quire_secret_key")
    @classmethod
    def _check_secret_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        from core.sealing import Sealer

        Sealer(v.get_secret_value().split(","))  # a bad key stops Quire here, not at the first webhook
        return v

    @field_validator("quire_metrics_token")
    @classmethod
    def _unset_if_empty(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value().strip() else None

    @field_validator("quire_audit_key")
    @classmethod
    def _check_audit_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        from core.checkpoint import SignerKey

        SignerKey.parse(v.get_secret_value())  # the message never shows the value
        return v

    @model_validator(mode="after")
    def _check_witnesses(self) -> Settings:
        self.witnesses()  # a URL without its key, or a key that is not a witness's, stops Quire here
        return self

    @field_validator("quire_public_url")
    @classmethod
    def _check_public_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return v.rstrip("/")

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

    @property
    def db_pool_size(self) -> int:
        # No transaction spans a model call: a model slot holds a connection for milliseconds per
        # call, so half as many connections as slots (and 20 more past that) never keeps one waiting.
        if self.quire_db_pool_size is not None:
            return self.quire_db_pool_size
        return max(10, self.llm_concurrency // 2)

    @property
    def public_url(self) -> str:
        return self.quire_public_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def webhook_policy(self) -> WebhookPolicy:
        return WebhookPolicy(
            allow_loopback=self.quire_webhook_allow_loopback,
            allow_private=self.quire_webhook_allow_private,
            networks=parse_networks(self.quire_webhook_networks),
        )

    @property
    def webhook_retry(self) -> RetrySchedule:
        return RetrySchedule(first_s=self.quire_webhook_first_retry_s, attempts=self.quire_webhook_attempts)

    def secret_keys(self) -> list[str]:
        """The sealing keys: QUIRE_SECRET_KEY, else the one in QUIRE_HOME/secret.key (made on first
        use, mode 0600, by whichever process needs it first; the others read it)."""
        if self.quire_secret_key is not None:
            return [k.strip() for k in self.quire_secret_key.get_secret_value().split(",") if k.strip()]
        path = self.home / SECRET_KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{SECRET_KEY_FILE}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new_key() + "\n")
            try:
                os.link(tmp, path)  # atomic, and never over a key another process made meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return [path.read_text().strip()]

    def operator_token(self, create: bool = False) -> str | None:
        """The codec server's token: QUIRE_OPERATOR_TOKEN, else the one `quire up` keeps in QUIRE_HOME
        (made with ``create``, once, mode 0600), else None (the codec server is off)."""
        if self.quire_operator_token is not None and self.quire_operator_token.get_secret_value():
            return self.quire_operator_token.get_secret_value()
        path = self.home / OPERATOR_TOKEN_FILE
        if create and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it meanwhile
                return path.read_text().strip()
            with os.fdopen(fd, "w") as f:
                f.write(f"op-{token_urlsafe(32)}\n")
        return path.read_text().strip() if path.exists() else None

    @property
    def codec_origins(self) -> list[str]:
        port = self.temporal_ui_port
        return self.quire_codec_origins or [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]

    def secrets(self) -> list[str]:
        """Values that must never appear in clear in logs or audit rows."""
        out = []
        for secret in (
            self.openai_api_key,
            self.quire_metrics_token,
            self.quire_temporal_key,
            self.quire_operator_token,
            self.quire_audit_key,
        ):
            if secret is not None and secret.get_secret_value():
                out.append(secret.get_secret_value())
        if self.quire_secret_key is not None:
            out.extend(k.strip() for k in self.quire_secret_key.get_secret_value().split(",") if k.strip())
        return out

    def audit_signer(self) -> SignerKey:
        """The checkpoint signing key: QUIRE_AUDIT_KEY, else QUIRE_HOME/audit.key (made once)."""
        if self.quire_audit_key is not None:
            return SignerKey.parse(self.quire_audit_key.get_secret_value())
        from services import auditkeys

        return auditkeys.signer(self.home)

    def witnesses(self) -> list[WitnessClient]:
        """The witnesses checkpoints go to (db.witness): QUIRE_WITNESS_URL with QUIRE_WITNESS_KEY."""
        return parse_witnesses(self.quire_witness_url, self.quire_witness_key)

    def audit_public_keys(self) -> list[VerifierKey]:
        """The keys checkpoints may be signed with: the current one, then QUIRE_HOME/audit.pub's."""
        from services import auditkeys

        keys = auditkeys.public_keys(self.home)
        if self.quire_audit_key is not None:
            current = SignerKey.parse(self.quire_audit_key.get_secret_value()).verifier
            keys = [current, *(k for k in keys if k != current)]
        return keys

    def temporal_keys(self) -> list[bytes]:
        """The keys of the Temporal payload codec (services.codec), the encrypting one first: the
        setting, else QUIRE_HOME's."""
        from services.codec import load_keys

        return load_keys(self.quire_temporal_key.get_secret_value() if self.quire_temporal_key else None, self.home)


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
