"""A webhook target as it resolves now, shared by the API (a user sets a target: ``services.webhooks``)
and the worker (before every delivery: ``activities.webhooks``): the form of the URL and the
addresses its host resolves to, against the operator's policy (``core.webhooks``). DNS is read
here, below both, like the database."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from core.webhooks import IPAddress, WebhookPolicy, url_problem

RESOLVE_TIMEOUT_S = 5.0


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an address literal: itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    out: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


async def check_target(url: str, policy: WebhookPolicy) -> tuple[str | None, list[IPAddress]]:
    """(why ``url`` may not be a webhook target, or None; the addresses it resolved to)."""
    why = url_problem(url)
    if why is not None:
        return f"the URL {why}", []
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = await resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
    except (OSError, TimeoutError, UnicodeError, ValueError) as exc:  # UnicodeError: a label IDNA refuses
        return f"its host {host[:100]!r} does not resolve ({type(exc).__name__}: {exc})", []
    why = policy.check(addresses)
    return (None if why is None else f"its host {host[:100]!r} resolves to a refused address: {why}"), addresses
