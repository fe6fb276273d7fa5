"""What one caller may ask of an API process: requests per API key (and failed sign-ins per
address) over a moving window, with the ``limits`` library, and live audit streams open at once,
per user and in all. Past a limit: 429 with Retry-After. Counted per API process: N processes
allow N times as much (README: Operators)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from fastapi import HTTPException
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from metrics import API_REFUSED

STREAM_RETRY_S = 30  # a stream slot frees when a stream ends: no clock says when


def too_many(message: str, retry_after_s: float, reason: str) -> HTTPException:
    API_REFUSED.labels(reason).inc()
    return HTTPException(429, message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class RateLimits:
    def __init__(self, per_key: str, auth_failures: str) -> None:
        self.per_key: RateLimitItem = parse(per_key)
        self.auth_failures: RateLimitItem = parse(auth_failures)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def _retry_after(self, item: RateLimitItem, *ids: str) -> float:
        return self.limiter.get_window_stats(item, *ids).reset_time - time.time()

    def request(self, key_id: int) -> None:
        """One request made with API key ``key_id``; 429 past QUIRE_RATE_LIMIT."""
        if not self.limiter.hit(self.per_key, "key", str(key_id)):
            raise too_many(
                f"rate limit of {self.per_key} requests per API key reached (QUIRE_RATE_LIMIT); slow down",
                self._retry_after(self.per_key, "key", str(key_id)),
                "rate_limited",
            )

    def check_address(self, ip: str | None) -> None:
        """Before a key is looked up: 429 for an address that failed to sign in too often."""
        if not self.limiter.test(self.auth_failures, "auth", ip or "-"):
            raise too_many(
                f"too many requests with a missing or invalid API key from this address ({self.auth_failures}, "
                "QUIRE_AUTH_FAILURE_LIMIT)",
                self._retry_after(self.auth_failures, "auth", ip or "-"),
                "unauthenticated",
            )

    def failed(self, ip: str | None) -> None:
        """A request without a valid key (its 401 writes no row: it is counted here and in metrics)."""
        API_REFUSED.labels("unauthenticated").inc()
        self.limiter.hit(self.auth_failures, "auth", ip or "-")


@dataclass
class StreamSlots:
    """Live audit streams open at once on this process, per user and in all."""

    per_user: int
    total: int
    open: dict[int, int] = field(default_factory=dict)

    def take(self, user_id: int) -> Slot:
        if sum(self.open.values()) >= self.total:
            raise too_many(
                f"this server has {self.total} live audit streams open, its limit (QUIRE_MAX_STREAMS); "
                "try again shortly",
                STREAM_RETRY_S,
                "streams",
            )
        if self.open.get(user_id, 0) >= self.per_user:
            raise too_many(
                f"you have {self.per_user} live audit streams open, the limit per user "
                "(QUIRE_MAX_STREAMS_PER_USER); close one first",
                STREAM_RETRY_S,
                "streams",
            )
        self.open[user_id] = self.open.get(user_id, 0) + 1
        return Slot(self, user_id)


@dataclass
class Slot:
    slots: StreamSlots
    user_id: int
    released: bool = False

    def release(self) -> None:
        """Idempotent: the stream's end and the response's end both call it."""
        if not self.released:
            self.released = True
            left = self.slots.open.get(self.user_id, 1) - 1
            if left:
                self.slots.open[self.user_id] = left
            else:
                self.slots.open.pop(self.user_id, None)
