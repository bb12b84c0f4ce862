"""`--max_cost_usd`: a run never sends a request whose estimated cost would take what it has committed past the budget.

Usage (the runner's feeder asks before each attempt; each attempt's end settles it)::

    budget = Budget(2.50, PriceBook())
    estimate = budget.estimate(body, prompt_tokens, completion_tokens)  # None: no price for its model, so no budget
    if budget.fits(estimate):          # else: wait while attempts are in flight, then stop the run
        budget.reserve(estimate)
        ...                            # send; when the attempt ends:
        budget.settle(estimate, actual)

Committed = what the finished attempts actually cost (their reported usage) + the estimates of those in flight.
An estimate prices the whole completion budget, so answers usually cost less than reserved: while attempts are
in flight a request that does not fit waits for them to settle rather than stop the run, and the budget is
spent, not left mostly unused. An attempt that got no answer (a timeout, a reset) settles at its estimate,
since the API may have run it; one refused with an error status settles at its reported usage, if any, else 0.

The budget is per run: rows of earlier runs are not counted (a rerun with a larger budget finishes the job).
Pure: dollars in, decisions out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .costs import PriceBook, format_dollars, is_flex, model_of, usage_tokens

__all__ = ["Budget"]

#: Slack for float sums: a budget met exactly is not crossed.
_EPSILON = 1e-12


@dataclass(slots=True)
class Budget:
    """The dollars a run may commit, what it has committed so far, and the prices it counts in."""

    limit: float
    prices: PriceBook
    #: What finished attempts cost, by their reported usage.
    spent: float = 0.0
    #: The estimates of the attempts in flight.
    in_flight: float = 0.0

    def __post_init__(self) -> None:
        if not self.limit > 0:
            raise ValueError(f"the budget must be a positive number of dollars, got {self.limit}")

    @property
    def committed(self) -> float:
        return self.spent + self.in_flight

    def fits(self, estimate: float) -> bool:
        """Whether an attempt estimated at `estimate` dollars may be sent now."""
        return self.committed + estimate <= self.limit + _EPSILON

    def reserve(self, estimate: float) -> None:
        self.in_flight += estimate

    def settle(self, estimate: float, actual: float) -> None:
        """An attempt ended: its estimate leaves the in-flight total, and what it cost is spent."""
        self.in_flight = max(0.0, self.in_flight - estimate)
        self.spent += actual

    def estimate(self, body: Mapping[str, Any], prompt_tokens: int, completion_tokens: int) -> float | None:
        """The dollars an attempt may cost: its prompt at the input price, its completion budget at the output price
        (`TokenEstimator.estimate_parts`)."""
        price = self.prices.price(model_of(body), flex=is_flex(body))
        if price is None:
            return None
        return price.dollars(prompt_tokens, completion_tokens)

    def actual(self, body: Mapping[str, Any], estimate: float, *, answer: Any, succeeded: bool, answered: bool) -> float:
        """What an ended attempt cost: its reported usage; with none, its estimate if it may have run (a success that
        reports no usage, or no answer at all), else nothing (an error answer is not billed)."""
        response = answer if isinstance(answer, Mapping) else None
        usage = usage_tokens(response)
        price = self.prices.price(model_of(body, response), flex=is_flex(body))
        if usage is not None and price is not None:
            return price.dollars(*usage)
        return estimate if succeeded or not answered else 0.0

    def stop_reason(self, estimate: float) -> str:
        """Why the run stops: the next request does not fit, and nothing in flight can make room."""
        return (
            f"--max_cost_usd {format_dollars(self.limit)} reached: this run spent {format_dollars(self.spent)}, and the next request "
            f"(estimated {format_dollars(estimate)}) would take it past the budget; rerun with a larger --max_cost_usd to go on"
        )

    def no_price_reason(self, body: Mapping[str, Any]) -> str:
        model = model_of(body)
        which = f"model {model!r}" if model else "requests without a model"
        return (
            f"--max_cost_usd needs a price, and there is none for {which}; give --price_input_per_mtok and "
            "--price_output_per_mtok (US dollars per million tokens)"
        )

