"""What a model call costs: a per-model price table (US dollars per million tokens: input,
cached input, output) and each call's cost in integer micro-dollars.

A price per million tokens is exactly the cost in micro-dollars of one token, so a call's cost
is ``uncached_in * input + cached_in * cached_input + out * output``, rounded half up once, at the
end, from exact decimals: totals are sums of integers and never drift.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel, ConfigDict, Field


class Price(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0, description="default: the input price")


def cost_micro_usd(
    price: Price | None, tokens_in: int | None, tokens_cached: int | None, tokens_out: int | None
) -> int | None:
    """The call's cost in micro-dollars, or None when its model has no price or its tokens are unknown.
    ``tokens_in`` counts the cached tokens too (as OpenAI-compatible usage reports them)."""
    if price is None or tokens_in is None or tokens_out is None:
        return None
    cached = min(max(tokens_cached or 0, 0), tokens_in)
    cached_price = price.input if price.cached_input is None else price.cached_input
    exact = (tokens_in - cached) * price.input + cached * cached_price + tokens_out * price.output
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd(micro: int) -> str:
    """Micro-dollars as a dollar amount to read: ``1234567`` -> ``"1.234567"``."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"
