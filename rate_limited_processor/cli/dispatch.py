"""What the command dispatches to: the online or the batch job (with shared limits, metrics and the benchmark
report around it), or the dry run's plan."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yarl import URL

from ..base.atomic_write import write_text_atomically
from ..base.errors import LimiterUnavailable, ResumeError
from ..base.models import APIRequest
from ..config.credentials import scrubber_for
from ..config.settings import REDIS_URL_VARIABLE, Secret, Settings
from ..core.budget import Budget
from ..core.costs import PriceBook
from ..core.deadline_plan import OnlineCapacity, Work, estimate, format_estimate
from ..core.stats import RunStats
from ..engine.intake import with_tier
from ..files.request_io import read_requests
from ..files.resume import prepare_results_file
from ..jobs.auto_job import AutoPrices, ledger_dollars, run_auto_job
from ..jobs.batch_job import BatchOptions, run_batch_job
from ..jobs.file_job import run_file_job, skip_done
from ..jobs.planning import format_plan, plan_requests
from ..jobs.preflight import first_model
from ..jobs.probe import auto_capacity
from ..providers.registry import batch_max_lines
from ..providers.token_estimation import TokenEstimator
from ..ui.report import RunReport
from .checks import auto_prices_from_args

if TYPE_CHECKING:
    from ..engine.shared_limiter import RedisLimiterFactory
    from ..ui.metrics import MetricsServer

from .exits import EXIT_OK, EXIT_USAGE, PROG


def dry_run(
    settings: Settings, requests_path: Path, save_path: Path, *, retry_failed: bool, prices: PriceBook | None = None, parquet: bool = False,
    deadline: float | None = None, both_prices: AutoPrices | None = None, batch: bool = False,
) -> int:
    """Plan the job as it would run now (lines with a row in the results file are skipped); send nothing. With a
    `deadline` (--mode auto), the plan's estimate too: the online time at the limits, both costs, the plan."""
    prepare = prepare_results_file
    if parquet:
        from ..files.parquet import prepare_parquet_results as prepare
    try:
        done, _ = prepare(save_path, retry_failed=retry_failed, repair=False)
    except ResumeError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    estimator = TokenEstimator(settings.token_encoding_name)
    tier = settings.service_tier
    items = (with_tier(item, tier) if isinstance(item, APIRequest) else item for item in skip_done(read_requests(requests_path), done))
    plan = plan_requests(items, settings.request_url, estimator)
    plan.already_done = done.claimed
    print(format_plan(plan, settings.limits, headroom=settings.headroom, prices=prices, batch=batch))
    if deadline is not None:
        books = both_prices or AutoPrices()
        capacity = OnlineCapacity.of(settings.limits, settings.headroom)
        dollars = (ledger_dollars(plan.costs, books.batch), ledger_dollars(plan.costs, books.online))
        print(format_estimate(estimate(0.0, deadline, capacity, Work(plan.requests, plan.tokens, output_tokens=plan.output_tokens), *dollars)))
    return EXIT_OK


async def shared_limiters(settings: Settings, redis_url: str | None, limit_key: str | None) -> RedisLimiterFactory | None:
    """Limiters in Redis, one key per account and model, when a Redis URL is given; checked before anything is sent."""
    url = redis_url or os.environ.get(REDIS_URL_VARIABLE)
    if not url:
        return None
    from ..engine.shared_limiter import RedisLimiterFactory  # noqa: F811 (the redis extra, loaded only when used)

    try:
        factory = await RedisLimiterFactory.connect(url, settings.request_url, limit_key=limit_key, accounts=max(1, len(settings.accounts)))
    except LimiterUnavailable as error:
        raise LimiterUnavailable(f"--redis_url: {error}") from None
    return factory


async def serve_metrics(args: argparse.Namespace, prices: PriceBook) -> MetricsServer | None:
    """/metrics listening (--metrics_port), before anything is sent; None without the flag."""
    if args.metrics_port is None:
        return None
    from ..ui.metrics import MetricsServer  # noqa: F811 (the metrics extra, loaded only when used)

    served = await MetricsServer(args.metrics_port, host=args.metrics_host, prices=prices).start()
    logging.getLogger(PROG).info("serving Prometheus metrics at %s", served.url)
    return served


async def _run(settings: Settings, args: argparse.Namespace, requests_path: Path, save_path: Path, show_progress: bool, prices: PriceBook) -> RunStats:
    redirect = contextlib.nullcontext()
    if show_progress:
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm(loggers=[logging.getLogger(PROG)])
    budget = Budget(args.max_cost_usd, prices) if args.max_cost_usd is not None else None
    max_lines = args.batch_max_lines or batch_max_lines(settings.request_url)  # the URL's batch API's most by default
    if args.mode == "auto":
        options = BatchOptions(max_lines=max_lines, poll_interval=args.batch_poll_interval)
        capacity = await auto_capacity(settings, model=first_model(requests_path))
        with redirect:
            return await run_auto_job(
                settings, requests_path, save_path, deadline_seconds=args.deadline, options=options, prices=auto_prices_from_args(args, settings.request_url),
                capacity=capacity, output_format=args.output_format, retry_failed=args.retry_failed, handle_signals=True,
                show_progress=show_progress, status_interval=args.status_interval or None,
            )
    if args.mode == "batch":
        options = BatchOptions(max_lines=max_lines, poll_interval=args.batch_poll_interval, fallback=args.batch_fallback or "none")
        with redirect:
            return await run_batch_job(
                settings, requests_path, save_path, options=options, prices=prices, budget=budget, output_format=args.output_format,
                retry_failed=args.retry_failed, handle_signals=True, show_progress=show_progress, status_interval=args.status_interval or None,
            )
    factory = await shared_limiters(settings, args.redis_url, args.limit_key)
    daily = settings.max_requests_per_day is not None or settings.max_tokens_per_day is not None
    key = settings.api_key.reveal() if isinstance(settings.api_key, Secret) else None
    shared_day = factory.day_spend(key) if factory is not None and daily else None
    benchmark = RunReport(streamed=settings.stream, settings=report_settings(settings)) if args.report or args.report_html else None
    served = None
    try:
        served = await serve_metrics(args, prices)
        with redirect:
            stats = await run_file_job(
                settings, requests_path, save_path, limiter_factory=factory,
                show_progress=show_progress, status_interval=args.status_interval or None, retry_failed=args.retry_failed,
                handle_signals=True, shutdown_grace=args.shutdown_grace, output_format=args.output_format,
                ordered=args.ordered, ordered_window=args.ordered_window, benchmark=benchmark, budget=budget,
                watch=served.watch if served is not None else None, shared_day=shared_day,
            )
    finally:
        if served is not None:
            await served.aclose()
        if factory is not None:
            await factory.aclose()
    if factory is not None:
        logging.getLogger(PROG).info("limits were shared through Redis under %s", ", ".join(map(repr, dict.fromkeys(factory.keys))))
    if benchmark is not None:
        write_reports(benchmark.build(stats), args.report, args.report_html)
    return stats


def report_settings(settings: Settings) -> dict[str, Any]:
    """What a report says was measured: the endpoint (no credentials or query, which may hold a key), the flags
    that shape the load."""
    url = URL(settings.request_url).with_user(None).with_query(None).with_fragment(None)
    return {
        "request_url": scrubber_for(settings)(str(url)),
        "stream": settings.stream,
        "arrivals": settings.arrivals,
        "request_rate": settings.request_rate,
        "max_in_flight": settings.max_in_flight,
        "max_requests_per_minute": settings.limits.requests_per_minute,
        "max_tokens_per_minute": settings.limits.tokens_per_minute,
    }


def _report_json(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2) + "\n"


def write_reports(record: dict[str, Any], json_path: str | None, html_path: str | None) -> None:
    """Write the benchmark report as JSON and as a page; a failure to write is said, and costs nothing else."""
    from ..ui.report_html import render_html

    for path, render in ((json_path, _report_json), (html_path, render_html)):
        if path is None:
            continue
        try:
            write_text_atomically(Path(path), render(record))
        except OSError as error:
            print(f"{PROG}: error: cannot write the report {path}: {error.strerror or error}", file=sys.stderr)
