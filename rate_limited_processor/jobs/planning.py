"""Planning a job without sending it (`--dry_run`): how many requests, how many tokens, what they will cost,
which limit binds, and how long the job will take at the given limits.

The cost is an upper bound per model: the prompt at the input price and the whole completion budget at the
output price (see `costs.py`); a model without a known price gets no dollar figure, and the plan says so.

The expected duration is the bucket math: a job of N requests and T estimated tokens takes at least
max(N / RPM, T / TPM) minutes, and with even pacing it takes about that (see the benchmarks).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..base.errors import InvalidRequest
from ..base.models import APIRequest, RejectedLine
from ..core.costs import CostLedger, PriceBook, format_dollars, is_flex, model_of
from ..core.limiter import Limits
from ..providers.endpoints import Endpoint, check_request
from ..providers.token_estimation import TokenEstimator
from ..ui.text import format_duration

__all__ = ["JobPlan", "plan_requests", "format_plan"]

#: How many invalid lines a plan names; the rest are counted.
MAX_PROBLEMS_SHOWN = 5


@dataclass(slots=True)
class JobPlan:
    """What a run of these requests would send."""

    requests: int = 0
    #: Tokens as the token limit counts them, and as an output-token limit apart counts them (Anthropic's).
    tokens: int = 0
    output_tokens: int = 0
    largest_request: int = 0
    by_endpoint: Counter[Endpoint] = field(default_factory=Counter)
    invalid: int = 0
    #: The first few invalid lines' reasons (each names its line).
    problems: list[str] = field(default_factory=list)
    #: Lines skipped because the results file already has their row.
    already_done: int = 0
    #: Tokens per model (prompt, completion budget), to price.
    costs: CostLedger = field(default_factory=CostLedger)

    def minutes(self, limits: Limits) -> tuple[float | None, float | None]:
        """(minutes the request limit alone needs, minutes the token limit alone needs); None if not known."""
        by_requests = self.requests / limits.requests_per_minute if limits.requests_per_minute else None
        by_tokens = self.tokens / limits.tokens_per_minute if limits.tokens_per_minute else None
        return by_requests, by_tokens


def plan_requests(items: Iterable[APIRequest | RejectedLine], request_url: str, estimator: TokenEstimator) -> JobPlan:
    """Validate and estimate every request, exactly as a run would, without sending any."""
    plan = JobPlan()
    for item in items:
        if isinstance(item, RejectedLine):
            _count_problem(plan, item.reason)
            continue
        try:
            _, endpoint, prompt, completion = check_request(item, request_url, estimator.estimate_parts)
        except InvalidRequest as error:
            _count_problem(plan, f"{item.name}: {error}")
            continue
        tokens = endpoint.charged_tokens(prompt, completion)
        plan.costs.add(model_of(item.body), input_tokens=prompt, output_tokens=completion, flex=is_flex(item.body))
        plan.requests += 1
        plan.tokens += tokens
        plan.output_tokens += endpoint.reserved_output(completion)
        plan.largest_request = max(plan.largest_request, tokens)
        plan.by_endpoint[endpoint] += 1
    return plan


def _count_problem(plan: JobPlan, reason: str) -> None:
    plan.invalid += 1
    if len(plan.problems) < MAX_PROBLEMS_SHOWN:
        plan.problems.append(reason)


def format_plan(plan: JobPlan, limits: Limits, *, headroom: float = 1.0, prices: PriceBook | None = None, batch: bool = False) -> str:
    """The dry run's report. Limits left to `auto` are not known before the API answers; `batch` (--mode batch):
    no rate limit paces the lines, the Batch API's own window does."""
    lines = ["", "rate_limited_processor dry run: nothing was sent"]
    endpoints = ", ".join(f"{count:,} /{endpoint.value}" for endpoint, count in plan.by_endpoint.most_common())
    lines.append(f"  requests         {plan.requests:,} to send" + (f" ({endpoints})" if endpoints else ""))
    if plan.already_done:
        lines.append(f"  already done     {plan.already_done:,} (rows of an earlier run; a rerun skips them)")
    if plan.invalid:
        lines.append(f"  invalid lines    {plan.invalid:,} (would be recorded as failures, not sent)")
        lines.extend(f"                   {problem}" for problem in plan.problems)
        if plan.invalid > len(plan.problems):
            lines.append(f"                   … and {plan.invalid - len(plan.problems):,} more")
    average = plan.tokens / plan.requests if plan.requests else 0
    lines.append(f"  tokens           {plan.tokens:,} estimated (prompt + completion budget); {average:,.0f} per request, largest {plan.largest_request:,}")
    if prices is not None:
        lines.extend(_cost_lines(plan, prices))
    if batch:
        lines.append("  expected time    within the batch API's 24-hour window (no rate limit paces a batch)")
        return "\n".join(lines)
    effective = Limits(_scaled(limits.requests_per_minute, headroom), _scaled(limits.tokens_per_minute, headroom), limits.burst_seconds)
    by_requests, by_tokens = plan.minutes(effective)
    at = f" (with {headroom:.0%} headroom)" if headroom < 1 else ""
    lines.append(f"  limits           {_limit(effective.requests_per_minute, 'requests')}, {_limit(effective.tokens_per_minute, 'tokens')}{at}")
    if by_requests is None and by_tokens is None:
        lines.append("  expected time    not known: give --max_requests_per_minute / --max_tokens_per_minute to plan with your limits")
        return "\n".join(lines)
    binding = "tokens" if (by_tokens or 0) > (by_requests or 0) else "requests"
    minutes = max(by_requests or 0, by_tokens or 0)
    lines.append(
        f"  binding limit    {binding} (the request limit alone needs {_minutes(by_requests)}, the token limit alone {_minutes(by_tokens)})"
    )
    lines.append(f"  expected time    {format_duration(minutes * 60)} at these limits, plus the last answers' latency")
    return "\n".join(lines)


def _cost_lines(plan: JobPlan, prices: PriceBook) -> list[str]:
    """The estimated cost per model and in total, at most: the prompt at the input price, the completion budget at the output price."""
    report = plan.costs.priced(prices)
    if not report.by_model:
        return []
    pricing = "batch prices" if prices.batch else "online prices"
    total = f"{format_dollars(report.total)} estimated at most, at {pricing} (prompt at the input price, completion budget at the output price)"
    if report.unpriced:
        total += f"; not counting {', '.join(report.unpriced)}, which has no known price"
    lines = [f"  cost (USD)       {total}"]
    for cost in report.by_model:
        if cost.price is None:
            lines.append(
                f"                   {cost.model}: {cost.requests:,} requests, {cost.input_tokens:,} input + {cost.output_tokens:,} output tokens: "
                "no price known (give --price_input_per_mtok and --price_output_per_mtok)"
            )
            continue
        lines.append(
            f"                   {cost.model}: {cost.requests:,} requests, {cost.input_tokens:,} input tokens x ${cost.price.input_per_mtok:g} + "
            f"{cost.output_tokens:,} output tokens x ${cost.price.output_per_mtok:g} per million = {format_dollars(cost.dollars or 0.0)} "
            f"({cost.price.source})"
        )
    return lines


def _minutes(minutes: float | None) -> str:
    return "? (auto: learned when the run starts)" if minutes is None else format_duration(minutes * 60)


def _scaled(limit: float | None, headroom: float) -> float | None:
    return None if limit is None else limit * headroom


def _limit(limit: float | None, unit: str) -> str:
    if limit is None:
        return f"{unit}/min auto (learned from the API)"
    return f"no {unit} limit" if math.isinf(limit) else f"{limit:,.0f} {unit}/min"
