"""The refusals before anything is sent: flags to Settings and prices, and every check of the flags, the files and
the extras a run needs (the checks of the URL and the input themselves are in `jobs.preflight`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..base.errors import UsageError
from ..config import settings as config
from ..config.settings import DEFAULT_REQUEST_URL, FROM_ENVIRONMENT, REDIS_URL_VARIABLE, Settings, key_variable_holding
from ..core.budget import Budget
from ..core.costs import PriceBook
from ..core.limiter import Limits
from ..core.retry_policy import RetryPolicy
from ..files.side_files import JOB_SIDECARS, RunFile, check_apart, job_files
from ..jobs.auto_job import SIDECARS as AUTO_SIDECARS
from ..jobs.auto_job import AutoPrices
from ..jobs.batch_job import SIDECARS as BATCH_SIDECARS
from ..jobs.file_job import check_output_path
from ..jobs.preflight import check_key_for_provider, check_readable, check_request_url, check_writable, first_model
from ..providers.registry import batch_max_lines, provider_for


def prices_from_args(args: argparse.Namespace, request_url: str) -> PriceBook:
    """The run's prices: the flags' for every model if given, else the price data's; batch prices in batch mode."""
    try:
        return PriceBook(
            request_url=request_url, batch=args.mode == "batch",
            input_per_mtok=args.price_input_per_mtok, output_per_mtok=args.price_output_per_mtok,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


def auto_prices_from_args(args: argparse.Namespace, request_url: str) -> AutoPrices:
    """--mode auto's prices both ways: at batch prices and online."""
    books = [
        PriceBook(request_url=request_url, batch=batch, input_per_mtok=args.price_input_per_mtok, output_per_mtok=args.price_output_per_mtok)
        for batch in (True, False)
    ]
    return AutoPrices(*books)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags to Settings, checking everything that can be checked before sending (the URL first)."""
    request_url = args.request_url if args.request_url is not None else DEFAULT_REQUEST_URL
    check_request_url(request_url)
    if args.token_encoding_name is not None:
        import tiktoken

        if args.token_encoding_name not in tiktoken.list_encoding_names():
            known = ", ".join(tiktoken.list_encoding_names())
            raise UsageError(f"--token_encoding_name: unknown encoding {args.token_encoding_name!r} (known: {known})")
    headers = dict(_parse_header(text) for text in args.header)
    accounts: tuple[config.Account, ...] = ()
    if args.accounts is not None:
        try:
            accounts = config.read_accounts(args.accounts)
        except OSError as error:
            raise UsageError(f"--accounts: cannot read {args.accounts}: {error.strerror or error}") from None
        except ValueError as error:
            raise UsageError(f"--accounts: {error}") from None
    if args.stream and request_url.rstrip("/").endswith("/embeddings"):
        raise UsageError("--stream: embeddings are not streamed; leave out --stream, or use a chat, completions, responses or messages URL")
    if args.arrivals == "poisson" and args.request_rate is None and args.max_requests_per_minute is None:
        raise UsageError("--arrivals poisson needs a rate: give --request_rate (per second) or --max_requests_per_minute")
    try:
        settings = Settings(
            request_url=request_url,
            api_key=args.api_key or FROM_ENVIRONMENT,
            limits=Limits(
                args.max_requests_per_minute, args.max_tokens_per_minute, burst_seconds=args.burst_seconds,
                output_tokens_per_minute=args.max_output_tokens_per_minute,
            ),
            headroom=args.headroom,
            token_encoding_name=args.token_encoding_name,
            retry=RetryPolicy(max_attempts=args.max_attempts),
            request_timeout=args.request_timeout,
            max_in_flight=args.max_in_flight,
            extra_headers=headers,
            accounts=accounts,
            stream=args.stream,
            arrivals=args.arrivals,
            request_rate=args.request_rate,
            max_requests_per_day=args.max_requests_per_day,
            max_tokens_per_day=args.max_tokens_per_day,
            service_tier=args.service_tier,
        )
    except ValueError as error:
        message = str(error)
        if message.startswith("api_key "):  # say where the key came from: the flag, or the variable
            message = ("--api_key" if args.api_key else f"${key_variable_holding(request_url, os.environ)}") + message.removeprefix("api_key")
        raise UsageError(message) from None
    return settings


def _parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise UsageError(f"--header: expected 'Name: value', got {name.strip() or text!r}")  # never echo a value
    return name.strip(), value.strip()


def check_deadline(args: argparse.Namespace) -> None:
    """--mode auto plans for a deadline, and only it has one."""
    if args.mode == "auto" and args.deadline is None:
        raise UsageError("--mode auto needs --deadline: when every line must be done, from now (45m, 6h, 2d)")
    if args.mode != "auto" and args.deadline is not None:
        raise UsageError("--deadline is for --mode auto: batches, with online as the rescue")
    if args.mode == "auto" and args.batch_fallback == "none":
        raise UsageError("--batch_fallback none is not for --mode auto: lines a batch failed or let expire go online, as the rescue's do")
    if args.mode == "auto" and args.max_cost_usd is not None:
        raise UsageError("--max_cost_usd is not for --mode auto: the plan itself takes the least cost that meets the deadline")


def _check_batch_mode(args: argparse.Namespace, request_url: str) -> None:
    """What --mode batch (and auto, which sends batches) does not do, said before anything is sent."""
    if args.ordered:
        raise UsageError("--ordered is for --mode online: a batch's results come back when the batch ends")
    for flag in ("--max_requests_per_day", "--max_tokens_per_day"):
        if getattr(args, flag[2:]) is not None:
            raise UsageError(f"{flag} is for --mode online: a batch is counted by the Batch API's own limits")
    if args.service_tier is not None:
        raise UsageError("--service_tier is for --mode online: a batch is half price already, at the Batch API's own tier")
    if args.output_format == "parquet":
        raise UsageError("--output_format parquet is for --mode online: --mode batch writes JSONL rows")
    if args.accounts is not None:
        raise UsageError("--accounts is for --mode online: --mode batch sends the file through one account's Batch API")
    provider = provider_for(request_url)
    if not provider.speaks_batch_api:
        raise UsageError(f"--mode {args.mode}: {provider.batch_api_refusal}")  # auto sends batches too: no batch, no plan
    most = batch_max_lines(request_url)
    if args.batch_max_lines is not None and args.batch_max_lines > most:
        raise UsageError(f"--batch_max_lines {args.batch_max_lines:,}: {provider.name}'s batch API takes at most {most:,} requests in a batch")


def _check_key(settings: Settings) -> None:
    """No key for a provider's own API: say which variable to set, before a request is refused for it."""
    if not settings.accounts:  # an account's key is checked where the accounts file is read
        check_key_for_provider(settings.request_url, has_key=settings.key is not None, headers=settings.extra_headers)


def _check_redis_extra(redis_url: str | None) -> None:
    """Limits shared through Redis need the redis extra: say which, before anything starts."""
    source = "--redis_url" if redis_url else f"${REDIS_URL_VARIABLE}" if os.environ.get(REDIS_URL_VARIABLE) else None
    if source is None:
        return
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        raise UsageError(
            f"{source} shares the limits through Redis, which needs the redis extra: pip install 'rate_limited_processor[redis]'"
        ) from None


def _check_metrics(args: argparse.Namespace) -> None:
    """--metrics_port needs the metrics extra, and watches an online run."""
    if args.metrics_port is None:
        return
    if args.mode != "online":
        raise UsageError("--metrics_port is for --mode online: a batch run waits on the Batch API, with nothing to watch per request")
    from ..ui.metrics import MetricsServer

    MetricsServer(args.metrics_port)  # refuses, naming the extra, when prometheus-client is missing


def check_budget(args: argparse.Namespace, prices: PriceBook, requests_path: Path) -> None:
    """A budget needs prices: refuse one that the first request's model has none for, before sending anything."""
    if args.max_cost_usd is None:
        return
    model = first_model(requests_path)
    if prices.price(model) is None:
        raise UsageError(Budget(args.max_cost_usd, prices).no_price_reason({"model": model} if model else {}))


def check_paths(args: argparse.Namespace, requests_path: Path, save_path: Path) -> None:
    """The input can be read, and the outputs can be written (checked without creating them)."""
    check_readable(requests_path)
    parquet = args.output_format == "parquet"
    try:  # a dry run writes nothing, but reads the results file: it must still be one
        if parquet:
            from ..files.parquet import check_parquet_output

            check_parquet_output(save_path)
        else:
            check_output_path(requests_path, save_path)
    except UsageError as error:
        raise UsageError(f"--save_filepath: {error}") from None
    if args.dry_run:
        return
    if not parquet:
        check_writable(save_path, "--save_filepath")
    for flag in ("--report", "--report_html"):
        path = getattr(args, flag[2:])
        if path is not None:
            check_writable(Path(path), flag)


def check_files_apart(args: argparse.Namespace, requests_path: Path | None, save_path: Path | None, summary_path: Path | None) -> None:
    """No file the run writes is another of its files (`side_files`): checked before anything is written."""
    if requests_path is None or save_path is None:  # --show_limits: nothing is written
        return
    sidecars = {"online": JOB_SIDECARS, "batch": BATCH_SIDECARS, "auto": AUTO_SIDECARS}[args.mode]
    files = job_files(requests_path, save_path, sidecars=sidecars)
    if args.accounts is not None:
        files.append(RunFile("--accounts", Path(args.accounts)))
    for flag, given in (("--summary_json", summary_path), ("--report", args.report), ("--report_html", args.report_html)):
        if given is not None:
            files.append(RunFile(flag, Path(given), written=True))
    check_apart(files)
