"""The summary at the end of a run, as text and as a JSON record (`--summary_json`): pure, from the stats."""

from __future__ import annotations

import math
from typing import Any

from ..core.costs import CostReport, PriceBook, format_dollars
from ..core.deadline_plan import Outcome, format_outcome
from ..core.limiter import Limits
from ..core.rate_control import ControlReport
from ..core.stats import LaneReport, RunStats
from .text import format_duration

__all__ = ["cost_record", "format_summary", "summary_record"]


def format_summary(
    stats: RunStats, *, save_path: str | None = None, prices: PriceBook | None = None, max_cost_usd: float | None = None,
    given: Limits | None = None,
) -> str:
    """The end-of-run report: what happened, how fast against the limits (and whether a limit `given` was lowered to
    what the API states), what it cost (with `prices`), and where the results are."""
    minutes = stats.elapsed / 60.0
    rpm = stats.attempts / minutes
    tpm = stats.tokens_charged / minutes
    lines = ["", "rate_limited_processor summary"]
    if stats.stop_reason:
        lines.append(f"  STOPPED EARLY: {stats.stop_reason}")
    of_total = f" of {stats.total:,}" if stats.total is not None else ""
    lines.append(f"  requests done    {stats.already_done + stats.done:,}{of_total}")
    if stats.already_done:
        lines.append(f"    already done   {stats.already_done:,} (results of an earlier run; not sent again)")
    lines.append(f"    succeeded      {stats.succeeded:,}")
    lines.append(f"    failed         {stats.failed:,} after their last attempt")
    lines.append(f"    invalid input  {stats.invalid:,} (recorded, not sent)")
    if stats.failed_earlier:
        lines.append(
            f"    failed before  {stats.failed_earlier:,} rows of earlier runs are failures, not sent again; "
            "--retry_failed sends them again"
        )
    if stats.orphan_rows:
        lines.append(f"  note             {stats.orphan_rows:,} rows of an earlier run match no input line (input edited since?)")
    if stats.stop_reason:
        not_done = f"{stats.total - stats.done - stats.already_done:,}" if stats.total is not None else "the rest"
        lines.append(f"    not finished   {not_done} (no final answer, so no row); rerun to send them")
    no_capacity = f", {stats.no_capacity_errors:,} no-capacity 429s (not a rate limit)" if stats.no_capacity_errors else ""
    lines.append(f"  attempts         {stats.attempts:,} ({stats.retries:,} retries, {stats.rate_limit_errors:,} rate-limit 429s{no_capacity})")
    lines.append(f"  elapsed          {format_duration(stats.elapsed)}")
    lines.extend(_throughput_lines(stats, rpm, tpm, given))
    if stats.succeeded:
        lines.append(
            f"  tokens           estimated {stats.estimated_tokens_succeeded:,} (charged to the token limit); "
            f"reported by the API {stats.reported_total_tokens:,} ({stats.reported_prompt_tokens:,} prompt)"
        )
    if abs(stats.server_token_ratio - 1) >= 0.02:
        lines.append(f"                   the API's rate limiter charged about {stats.server_token_ratio:.2f}x our estimates (paced to match)")
    lines.extend(_control_lines(stats, minutes))
    lines.extend(_in_flight_lines(stats))
    lines.extend(_lane_lines(stats))
    if stats.deadline_plan is not None:  # priced both ways by the plan (one price book would misprice half the lines)
        lines.append(f"  {format_outcome(stats.deadline_plan)}")
    elif prices is not None:
        lines.extend(_cost_lines(stats, prices, max_cost_usd))
    if save_path:
        lines.append(f"  results          {save_path}")
    return "\n".join(lines)


def _control_lines(stats: RunStats, minutes: float) -> list[str]:
    """What the closed-loop rate control found, when the server's 429s made it act: a limit for next time."""
    control = stats.control
    if control is None or control.cuts == 0:
        return []
    admitted = (stats.attempts - stats.rate_limit_errors) / minutes
    found = []
    if control.found_requests_per_minute is not None:
        rpm = _round_figure(control.found_requests_per_minute)
        found.append(f"about {rpm:,.0f} RPM (next time: --max_requests_per_minute {rpm:.0f})")
    if control.found_tokens_per_minute is not None:
        tpm = _round_figure(control.found_tokens_per_minute)
        found.append(f"about {tpm:,.0f} TPM (next time: --max_tokens_per_minute {tpm:.0f})")
    line = f"  rate control     sent at about {admitted:,.0f} RPM after {stats.rate_limit_errors:,} rate-limit 429s"
    if found:
        line += "; the server's limit appears to be " + " and ".join(found)
    return [line]


def _in_flight_lines(stats: RunStats) -> list[str]:
    """Whether `--max_in_flight` held the run below its limits: at a long latency, a rate needs rate x latency
    requests in flight (Little's law), and the cap, not the API, then sets the pace."""
    cap, needed = stats.max_in_flight, stats.needed_in_flight
    if cap is None or not stats.in_flight_cap_waits or needed is None or not math.isfinite(needed) or needed <= cap:
        return []
    enough = _round_figure(needed * 1.2)
    return [
        f"  in flight        --max_in_flight {cap:,} held the pace below the limits: at the latency seen they need about "
        f"{needed:,.0f} in flight; --max_in_flight {enough:.0f} would not bind"
    ]


def _cost_lines(stats: RunStats, prices: PriceBook, max_cost_usd: float | None) -> list[str]:
    """What the succeeded requests cost by the API's reported usage, beside what they were estimated to cost."""
    spent, estimated = stats.spent.priced(prices), stats.estimated_cost.priced(prices)
    lines = []
    if estimated.by_model:
        pricing = "batch prices" if prices.batch else "online prices"
        lines.append(
            f"  cost (USD)       spent {format_dollars(spent.total)} by the API's reported usage; estimated {format_dollars(estimated.total)} "
            f"for the same {estimated.requests:,} requests (prompt + completion budget); at {pricing}"
        )
        spent_by_model = {cost.model: cost for cost in spent.by_model}
        for cost in estimated.by_model:
            if cost.price is None:
                lines.append(f"                   {cost.model}: {cost.requests:,} requests, no price known (see --price_input_per_mtok)")
                continue
            paid = spent_by_model.get(cost.model)
            lines.append(
                f"                   {cost.model}: {cost.requests:,} requests, {format_dollars((paid.dollars or 0.0) if paid else 0.0)} spent, "
                f"{format_dollars(cost.dollars or 0.0)} estimated (${cost.price.input_per_mtok:g} / ${cost.price.output_per_mtok:g} per million "
                f"input / output tokens; {cost.price.source})"
            )
    if max_cost_usd is not None:
        lines.append(f"  budget           {format_dollars(max_cost_usd)} (--max_cost_usd), for this run")
    return lines


def cost_record(stats: RunStats, prices: PriceBook, max_cost_usd: float | None) -> dict[str, Any]:
    """The summary's dollars as data: spent (reported usage) and estimated, per model and in total."""
    spent: CostReport = stats.spent.priced(prices)
    estimated = stats.estimated_cost.priced(prices)
    return {
        "pricing": "batch" if prices.batch else "online",
        "spent_usd": spent.record()["usd"],
        "estimated_usd": estimated.record()["usd"],
        "max_cost_usd": max_cost_usd,
        "spent": spent.record(),
        "estimated": estimated.record(),
    }


def _lane_lines(stats: RunStats) -> list[str]:
    """Each account's and model's share, and the limits its headers stated: where the work went."""
    lanes = stats.lanes if len(stats.lanes) > 1 else []
    lines = ["  lanes            (account/model: requests sent, their share; the limits its headers stated)"] if lanes else []
    sent = sum(lane.sent for lane in lanes) or 1
    for lane in lanes:
        name = f"{lane.account}/{lane.model}" if lane.model else lane.account
        line = f"    {name:<14} {lane.sent:,} sent ({lane.sent / sent:.0%}), {lane.succeeded:,} succeeded, {lane.rate_limited:,} rate-limit 429s"
        stated = _stated(lane.learned)
        if stated:
            line += f"; {stated}"
        if lane.found_requests_per_minute is not None:
            line += f"; its limit appears to be about {_round_figure(lane.found_requests_per_minute):,.0f} RPM"
        lines.append(line)
    for account, reason in stats.dropped_accounts.items():
        lines.append(f"  dropped account  {account}: {reason}")
    return lines


def _stated(limits: Limits) -> str:
    parts = [
        f"{value:,.0f} {unit}"
        for value, unit in ((limits.requests_per_minute, "RPM"), (limits.tokens_per_minute, "TPM"), (limits.output_tokens_per_minute, "output TPM"))
        if value is not None and math.isfinite(value)
    ]
    return ", ".join(parts)


def _round_figure(value: float) -> float:
    """Three significant figures: a measured limit is not known to the request."""
    if value <= 0 or not math.isfinite(value):
        return value
    return float(f"{value:.3g}")


def _throughput_lines(stats: RunStats, rpm: float, tpm: float, given: Limits | None) -> list[str]:
    """The pace against the limits, only where it means something: not for a run with no success (its "rate"
    is of failures), nor against rate limits for the Batch API (none paces it, and it charges no tokens to one)."""
    if not stats.succeeded:
        return ["  throughput       none: no request succeeded"]
    if stats.batch:
        done = stats.succeeded + stats.failed
        return [f"  throughput       {done / (stats.elapsed / 60.0):,.0f} requests/min, through the Batch API (no rate limit paces it)"]
    given = given if given is not None else Limits(None, None)
    return [
        f"  throughput       {rpm:,.0f} requests/min{_of_limit(rpm, stats.limits.requests_per_minute, given.requests_per_minute)}",
        f"                   {tpm:,.0f} tokens/min{_of_limit(tpm, stats.limits.tokens_per_minute, given.tokens_per_minute)}",
    ]


def _of_limit(value: float, limit: float | None, given: float | None = None) -> str:
    if limit is None:
        return " (limit not known: the API sent no x-ratelimit headers)"
    if math.isinf(limit):
        return " (no limit set)"
    if given is not None and limit < given * 0.999:
        return f" ({value / limit:.0%} of the {limit:,.0f} limit the API states; the {given:,.0f} given was lowered to it)"
    return f" ({value / limit:.0%} of the {limit:,.0f} limit)"


def summary_record(
    stats: RunStats | None,
    *,
    exit_code: int,
    exit_meaning: str,
    given: Limits,
    headroom: float = 1.0,
    error: str | None = None,
    requests_path: str | None = None,
    save_path: str | None = None,
    prices: PriceBook | None = None,
    max_cost_usd: float | None = None,
) -> dict[str, Any]:
    """The summary as data, for `--summary_json`: the same facts as `format_summary`, plus the exit code.

    `stats` is None for a run refused before it started (exit code 2): the counts are then zero and
    `error` says why. Limits are requests and tokens per minute; null where not known.
    """
    if stats is None:
        stats = RunStats(given, started_at=0.0, finished_at=0.0)
    not_finished = max(0, stats.total - stats.done - stats.already_done) if stats.total is not None else None
    return {
        "exit_code": exit_code,
        "exit_meaning": exit_meaning,
        "stop_reason": stats.stop_reason,
        "error": error,
        "total": stats.total,
        "already_done": stats.already_done,
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "invalid": stats.invalid,
        "not_finished": not_finished,
        "attempts": stats.attempts,
        "retries": stats.retries,
        "rate_limit_429s": stats.rate_limit_errors,
        "no_capacity_429s": stats.no_capacity_errors,
        "elapsed_s": round(stats.elapsed, 3),
        "tokens_charged": stats.tokens_charged,
        "tokens_estimated_succeeded": stats.estimated_tokens_succeeded,
        "tokens_reported_total": stats.reported_total_tokens,
        "tokens_reported_prompt": stats.reported_prompt_tokens,
        "limits": {
            "given": _limits_record(given),
            "used": _limits_record(stats.limits),
            "learned": _limits_record(_learned(stats.limits, given)),
            "headroom": headroom,
        },
        "server_token_ratio": round(stats.server_token_ratio, 3),
        "rate_control": _control_record(stats.control),
        "lanes": [_lane_record(lane) for lane in stats.lanes] if len(stats.lanes) > 1 else [],
        "dropped_accounts": dict(stats.dropped_accounts),
        "failed_earlier": stats.failed_earlier,
        "orphan_rows": stats.orphan_rows,
        "cost": cost_record(stats, prices, max_cost_usd) if prices is not None and stats.deadline_plan is None else None,
        "deadline_plan": _plan_record(stats.deadline_plan),
        "requests_file": requests_path,
        "results_file": save_path,
    }


def _plan_record(plan: Outcome | None) -> dict[str, Any] | None:
    """`--mode auto`: lines and dollars each way (null dollars: no price known), and the saving against all-online."""
    if plan is None:
        return None
    spent = None if plan.batch_dollars is None or plan.online_dollars is None else plan.batch_dollars + plan.online_dollars
    saved = None if spent is None or plan.all_online_dollars is None else plan.all_online_dollars - spent
    rounded = {name: None if value is None else round(value, 6) for name, value in (
        ("batch_usd", plan.batch_dollars), ("online_usd", plan.online_dollars), ("all_online_usd", plan.all_online_dollars), ("saved_usd", saved),
    )}
    return {"batched": plan.batched, "online": plan.online, "cancels": plan.cancels, **rounded, "late_seconds": round(plan.late_seconds, 3)}


def _control_record(control: ControlReport | None) -> dict[str, Any] | None:
    """What the closed-loop rate control found: its cuts, and where the server's limit appears to be."""
    if control is None:
        return None
    return {
        "cuts": control.cuts,
        "found_requests_per_minute": None if control.found_requests_per_minute is None else round(control.found_requests_per_minute, 1),
        "found_tokens_per_minute": None if control.found_tokens_per_minute is None else round(control.found_tokens_per_minute, 1),
    }


def _lane_record(lane: LaneReport) -> dict[str, Any]:
    return {
        "account": lane.account,
        "model": lane.model,
        "sent": lane.sent,
        "succeeded": lane.succeeded,
        "rate_limit_429s": lane.rate_limited,
        "learned": _limits_record(lane.learned),
        "found_requests_per_minute": None if lane.found_requests_per_minute is None else round(lane.found_requests_per_minute, 1),
    }


def _learned(known: Limits, given: Limits) -> Limits:
    """The limits that did not come from the user: learned from the API's headers or its 429s."""
    def learned(value: float | None, stated: float | None) -> float | None:
        return value if value is not None and value != stated else None

    return Limits(learned(known.requests_per_minute, given.requests_per_minute), learned(known.tokens_per_minute, given.tokens_per_minute))


def _limits_record(limits: Limits) -> dict[str, float | str | None]:
    def value(rate: float | None) -> float | str | None:
        if rate is None:
            return None
        return "unlimited" if math.isinf(rate) else round(rate, 3)

    record = {"requests_per_minute": value(limits.requests_per_minute), "tokens_per_minute": value(limits.tokens_per_minute)}
    if limits.output_tokens_per_minute is not None:
        record["output_tokens_per_minute"] = value(limits.output_tokens_per_minute)
    return record
