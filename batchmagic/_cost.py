"""Prices, per-row cost, and the budget guard.

Prices come from ``prices=`` (USD per million tokens) when given, else from the ``genai-prices``
package for the providers it knows, else they are *unknown* and every cost is missing. Nothing is
ever guessed. The Batch API discount is applied only where the provider documents one.

The budget guard reserves each request's worst case (estimated prompt tokens plus ``max_tokens``)
before it is sent and settles it with the real usage when the answer arrives, so a run never
dispatches a request that could take total spend past the budget.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError

#: presets -> genai-prices provider ids (providers it does not know are left out: unknown)
_GENAI_PROVIDERS = {"openai": "openai", "deepseek": "deepseek"}
#: documented Batch API prices as a share of the online price
BATCH_DISCOUNT = {"openai": 0.5, "dashscope": 0.5, "dashscope-intl": 0.5}


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    source: str  # "prices=" or "genai-prices <version>"
    batch_share: float | None = None  # Batch API price as a share of this, where documented

    def cost(self, input_tokens: int | None, output_tokens: int | None) -> float:
        return ((input_tokens or 0) * self.input + (output_tokens or 0) * self.output) / 1e6


def resolve_price(model: str | None, provider: str | None, prices: Any) -> Price | None:
    """The price of ``model`` at ``provider``; None when unknown."""
    share = BATCH_DISCOUNT.get(provider or "")
    if prices is not None:
        if isinstance(prices, Price):
            return prices
        if not isinstance(prices, dict) or "input" not in prices:
            raise ConfigError(
                "prices= takes {'input': USD per 1M input tokens, 'output': USD per 1M output "
                "tokens} (and optionally 'batch_share', e.g. 0.5)"
            )
        try:
            pin = float(prices["input"])
            pout = float(prices.get("output", 0.0))
        except (TypeError, ValueError):
            raise ConfigError("prices= values must be numbers (USD per million tokens)") from None
        if pin < 0 or pout < 0:
            raise ConfigError("prices= values must not be negative")
        return Price(pin, pout, "prices=", prices.get("batch_share", share))
    genai_provider = _GENAI_PROVIDERS.get(provider or "")
    if not model or genai_provider is None:
        return None
    try:
        from genai_prices import Usage, calc_price
    except ImportError:
        return None
    try:
        calc = calc_price(Usage(input_tokens=1_000_000, output_tokens=1_000_000), model_ref=model,
                          provider_id=genai_provider)
    except LookupError:
        return None
    import genai_prices

    version = getattr(genai_prices, "__version__", "")
    return Price(float(calc.input_price), float(calc.output_price),
                 f"genai-prices {version}".strip(), share)


class BudgetGuard:
    """Reserve the worst case before sending, settle with real usage after."""

    def __init__(self, budget: float, price: Price, *, assumed_output: int | None = None):
        self.budget = float(budget)
        self.price = price
        # output tokens reserved per request because the call set no max_tokens (None if set)
        self.assumed_output = assumed_output
        self.spent = 0.0  # settled: real cost of answers, worst case of possibly billed failures
        self.reserved = 0.0  # worst case of requests in flight
        self.changed = asyncio.Event()

    def try_reserve(self, amount: float) -> bool:
        if self.spent + self.reserved + amount > self.budget + 1e-12:
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual
        self.changed.set()

    def message(self, next_cost: float) -> str:
        """Why the run stops: what was spent, and what the next request could cost at worst."""
        text = (f"the budget of {usd(self.budget)} would be exceeded: {usd(self.spent)} spent so "
                f"far, and the next request could cost up to {usd(next_cost)} (its prompt plus "
                "every output token it may use)")
        if self.assumed_output is not None:
            text += (f"; no max_tokens was given, so each request reserves "
                     f"{self.assumed_output} output tokens: set params={{'max_tokens': N}} to "
                     "reserve less")
        return text


def usd(amount: float) -> str:
    """Dollars with the digits that matter: $12.50, $0.0123, $0.000042."""
    if amount >= 1:
        return f"${amount:,.2f}"
    if amount >= 0.01 or amount == 0:
        return f"${amount:.4f}"
    return f"${amount:.2g}" if amount >= 1e-4 else f"${amount:.6f}".rstrip("0")
