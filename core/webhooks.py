"""Webhooks: which URLs and addresses a job's end may be POSTed to, the event a job's end becomes,
and the Standard Webhooks secret format. Pure rules; the resolving and the POST are in
``activities/webhooks.py``.

A target is refused when any address its host resolves to is not public (loopback, private,
link-local, CGNAT, multicast, reserved, unspecified), unless the operator allowed that kind, or
named networks that alone are allowed (``WebhookPolicy``). Only ``http`` and ``https`` URLs with
a host and no credentials are accepted: the signature, not a password in the URL, says the
request is Quire's.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What a webhook URL looks like, as the OpenAPI schema says it (url_problem checks more).
URL_PATTERN = "^https?://[^\\s]+$"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# Any Standard Webhooks secret, known to this process or not: the Redactor removes every match.
SECRET_PATTERN = re.compile(r"whsec_[A-Za-z0-9+/=_-]{16,}")
# 100.64.0.0/10 (carrier-grade NAT) is neither global nor private to the ipaddress module.
_SHARED = ipaddress.ip_network("100.64.0.0/10")
# IPv6 forms that carry an IPv4 address a gateway connects to: NAT64 (RFC 6052 well-known and
# local-use prefixes) hold it in their last 32 bits; 6to4 (2002::/16) and Teredo have properties.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def message_id(job_id: str) -> str:
    """The event's ``webhook-id``: one per job end, the same on every retry (receivers dedupe on it)."""
    return f"msg_{job_id.replace('-', '')}"


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook target by its form alone, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port out of range or not a number
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (the signature authenticates Quire's requests)"
    if port == 0:
        return "has port 0"
    if any(c.isspace() for c in url):
        return "must not contain whitespace"
    return None


@dataclass(frozen=True)
class WebhookPolicy:
    """Where webhooks may go. ``networks``, when given, are the only targets allowed (and allowed
    even when private or loopback); otherwise public addresses, and loopback or private ones only
    when allowed."""

    allow_loopback: bool = False
    allow_private: bool = False
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` may not be a webhook target, or None. An IPv6 address that embeds an IPv4 one
        (mapped, 6to4, NAT64, Teredo) is judged by the IPv4 address it reaches."""
        inner = embedded_ipv4(ip)
        if inner is not None:
            why = self._refusal(inner)
            return None if why is None else f"{ip} reaches {why}"
        return self._refusal(ip)

    def _refusal(self, ip: IPAddress) -> str | None:
        if self.networks:
            if any(ip in n for n in self.networks if n.version == ip.version):
                return None
            return f"{ip} is outside the allowed webhook networks (QUIRE_WEBHOOK_NETWORKS)"
        if ip.is_loopback:
            return None if self.allow_loopback else f"{ip} is a loopback address (QUIRE_WEBHOOK_ALLOW_LOOPBACK)"
        if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            return f"{ip} is not a unicast host address"
        if ip.is_link_local:
            return f"{ip} is a link-local address"
        if ip.is_private or ip in _SHARED or not ip.is_global:
            return None if self.allow_private else f"{ip} is a private address (QUIRE_WEBHOOK_ALLOW_PRIVATE)"
        return None

    def check(self, addresses: Sequence[IPAddress]) -> str | None:
        """Why a host resolving to ``addresses`` may not be a target (any one refused is enough:
        the connection could go to any of them), or None."""
        if not addresses:
            return "the host has no address"
        for ip in addresses:
            why = self.refusal(ip)
            if why is not None:
                return why
        return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (IPv4-mapped, 6to4, NAT64, Teredo's client), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in n for n in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def delivery_error(exc: BaseException | None, status: int | None) -> str | None:
    """What the job's owner is told of a failed delivery: a class of failure, never the raw text
    (which would tell them what answers at an address: a port scanner's oracle)."""
    if exc is None:
        return None if status is None or 200 <= status < 300 else f"HTTP {status}"
    name = type(exc).__name__
    if "Timeout" in name:
        return "no answer in time"
    if "SSL" in name or "TLS" in name or "certificate" in str(exc).lower():
        return "TLS handshake failed"
    if "Connect" in name or "Network" in name:
        return "could not connect"
    return "no valid HTTP answer"


def parse_networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


@dataclass(frozen=True)
class RetrySchedule:
    """How a delivery is retried (by Temporal): the first retry after ``first_s``, each wait 4x
    the last, at most ``max_interval_s``; ``attempts`` in all. The default spans about 8 hours."""

    first_s: float = 5.0
    max_interval_s: float = 7200.0
    attempts: int = 10
    backoff: float = 4.0


def event_type(status: str) -> str:
    return f"job.{status}"


def job_event(
    job: Any,
    words: int | None,
    cost_micro_usd: int | None,
    base_url: str,
    account: dict[str, Any] | None = None,
    coherence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of a job's webhook: Standard Webhooks' ``{type, timestamp, data}``; ``account``:
    what its words are made of (``core.length.WordAccount``); ``coherence``: its continuity
    findings in numbers (``core.continuity.brief``)."""
    jid = str(job.id)
    links = {
        "self": f"/v1/jobs/{jid}",
        "output": f"/v1/jobs/{jid}/output",
        "partial_output": f"/v1/jobs/{jid}/output?partial=1",
        "audit": f"/v1/jobs/{jid}/audit",
        "coherence": f"/v1/jobs/{jid}/coherence",
        "page": f"/jobs/{jid}",
    }
    base = base_url.rstrip("/")
    return {
        "type": event_type(job.status),
        "timestamp": job.completed_at.isoformat() if job.completed_at else None,
        "data": {
            "job_id": jid,
            "status": job.status,
            "kind": job.kind,
            "title": job.title,
            "words": words,
            "target_words": job.target_words,
            "target_met": words is not None and job.status == "succeeded" and words >= job.target_words,
            "error_code": job.error_code,
            "failure_reason": job.failure_reason,
            "cost_micro_usd": cost_micro_usd,
            "account": account,
            "coherence": coherence,
            "links": {k: base + v for k, v in links.items()},
        },
    }
