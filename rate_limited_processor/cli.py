"""The command line: the cookbook script's flags, plus a few more. A thin layer over `run_file_job`.

Exit codes (also in the README):
  0  every request succeeded
  1  the run finished, but some requests failed or some lines were invalid (see the output file)
  2  usage or input error: nothing was sent
  3  stopped early (bad API key, no quota, interrupted, output unwritable): a rerun sends what is left
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import config
from .config import (
    DEFAULT_LOGGING_LEVEL,
    DEFAULT_ORDERED_WINDOW,
    DEFAULT_REQUEST_URL,
    DEFAULT_SHUTDOWN_GRACE,
    FROM_ENVIRONMENT,
    REDIS_URL_VARIABLE,
    Settings,
)
from .credentials import scrubber_for
from .endpoints import endpoint_from_url, missing_field_reason, resolve_url
from .errors import LimiterUnavailable, ResumeError, UsageError
from .job import check_output_path, default_save_path, run_file_job, skip_done
from .limiter import DEFAULT_BURST_SECONDS, Limits, RateLimiter
from .models import APIRequest, RejectedLine
from .planning import format_plan, plan_requests
from .request_io import read_requests
from .resume import prepare_results_file
from .retry_policy import RetryPolicy
from .status import RunStats, format_summary
from .token_estimation import TokenEstimator

__all__ = ["main", "build_parser", "settings_from_args", "exit_code", "UsageError"]

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3

PROG = "rate_limited_processor"
#: How many lines are checked before sending: if none of them is usable, the file is refused whole.
INPUT_CHECK_LINES = 100


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it has none worth printing (its help then says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the user sees exactly what is wrong.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"python -m {PROG}",
        description="Send a JSONL file of OpenAI API requests as fast as your rate limits allow, and no faster.",
        formatter_class=_HelpFormatter,
        epilog="Exit codes: 0 all succeeded; 1 some failed; 2 usage or input error; 3 stopped early (rerun to finish).",
    )
    add = parser.add_argument
    add("--requests_filepath", required=True, help="JSONL file, one request body per line (optional 'metadata' field is passed through, never sent)")
    add("--save_filepath", default=None, help="where results are appended (default: <input stem>_results.jsonl beside the input)")
    add(
        "--request_url", default=DEFAULT_REQUEST_URL,
        help="endpoint every request is POSTed to (OpenAI, Azure or OpenAI-compatible); for Batch input, lines' own urls replace its "
        "endpoint part, and an API root such as https://api.openai.com/v1 will do",
    )
    add("--api_key", default=None, help="API key (default: $OPENAI_API_KEY; prefer the variable: flags show in process lists)")
    add(
        "--max_requests_per_minute", type=_limit, default="auto",
        help="requests-per-minute limit to stay under; auto: learned from the API's x-ratelimit headers (a given number is lowered to "
        "what the API reports)",
    )
    add("--max_tokens_per_minute", type=_limit, default="auto", help="tokens-per-minute limit to stay under (estimated with tiktoken); auto: learned as above")
    add("--headroom", type=_fraction, default=1.0, help="send at this fraction of the limits, leaving the rest for other traffic on the same key (e.g. 0.9)")
    add("--token_encoding_name", default=None, help="tiktoken encoding for every request (default: chosen from each request's model)")
    add("--max_attempts", type=_positive_int, default=config.DEFAULT_MAX_ATTEMPTS, help="attempts per request in all, first try included")
    add(
        "--logging_level", type=_logging_level, default=DEFAULT_LOGGING_LEVEL,
        help="DEBUG, INFO (a line per request sent and done), WARNING (retries), ERROR, or a number",
    )
    add(
        "--request_timeout", type=_positive_float, default=config.DEFAULT_REQUEST_TIMEOUT,
        help="seconds one attempt may take before it is abandoned and retried",
    )
    add("--max_in_flight", type=_positive_int, default=config.DEFAULT_MAX_IN_FLIGHT, help="most requests awaiting a response at once")
    add("--burst_seconds", type=_positive_float, default=DEFAULT_BURST_SECONDS, help="bucket capacity in seconds of the limit: how large a burst may be")
    add("--no_progress", action="store_true", help="no progress bar, even on a terminal")
    add(
        "--output_format", choices=["auto", "cookbook", "batch"], default="auto",
        help="result rows as the cookbook writes them, or as the Batch API does; auto: Batch output for Batch input",
    )
    add(
        "--header", action="append", default=[], metavar="'NAME: VALUE'",
        help="an extra HTTP header for every request, repeatable (e.g. for a gateway); values are never logged",
    )
    add(
        "--dry_run", action="store_true",
        help="read and check every line, estimate tokens, and print the count, which limit binds and the expected duration; send "
        "nothing",
    )
    add(
        "--ordered", action="store_true",
        help="write results in input order instead of completion order (finished results wait for earlier ones, up to --ordered_window"
        " of them)",
    )
    add(
        "--ordered_window", type=_positive_int, default=DEFAULT_ORDERED_WINDOW,
        help="with --ordered, the most finished results held back; a request slower than the rest holds up at most this many",
    )
    add(
        "--redis_url", default=None,
        help=f"share the limits with every process using the same Redis and limit key, e.g. redis://host:6379/0 (default: "
        f"${REDIS_URL_VARIABLE}; needs the 'redis' extra)",
    )
    add(
        "--limit_key", default=None,
        help="the name processes share limits under (default: the API's host, the first request's model and a hash of the API key)",
    )
    add(
        "--retry_failed", action="store_true",
        help="on a rerun, send again the requests whose rows in the results file are failures (they are removed from it first)",
    )
    add(
        "--shutdown_grace", type=_positive_float, default=DEFAULT_SHUTDOWN_GRACE,
        help="after Ctrl-C or SIGTERM, seconds the requests in flight get to finish (a second Ctrl-C stops at once)",
    )
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _limit(text: str) -> float | None:
    """A per-minute limit, or None for "auto" (argparse applies this to the "auto" default too)."""
    return None if text.strip().lower() == "auto" else _positive_float(text)


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text!r}")
    return value


def _logging_level(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown logging level {text!r}")
    return level


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags to Settings, checking everything that can be checked before sending."""
    if args.token_encoding_name is not None:
        import tiktoken

        if args.token_encoding_name not in tiktoken.list_encoding_names():
            known = ", ".join(tiktoken.list_encoding_names())
            raise UsageError(f"--token_encoding_name: unknown encoding {args.token_encoding_name!r} (known: {known})")
    headers = dict(_parse_header(text) for text in args.header)
    try:
        return Settings(
            request_url=args.request_url,
            api_key=args.api_key or FROM_ENVIRONMENT,
            limits=Limits(args.max_requests_per_minute, args.max_tokens_per_minute, burst_seconds=args.burst_seconds),
            headroom=args.headroom,
            token_encoding_name=args.token_encoding_name,
            retry=RetryPolicy(max_attempts=args.max_attempts),
            request_timeout=args.request_timeout,
            max_in_flight=args.max_in_flight,
            extra_headers=headers,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


def _parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise UsageError(f"--header: expected 'Name: value', got {name.strip() or text!r}")  # never echo a value
    return name.strip(), value.strip()


def check_input(requests_path: Path, request_url: str) -> None:
    """Fail before sending if the file holds no requests, or none of its first lines is usable."""
    first_problem = None
    checked = 0
    for item in itertools.islice(read_requests(requests_path), INPUT_CHECK_LINES):
        checked += 1
        problem = item.reason if isinstance(item, RejectedLine) else _problem_with(item, request_url)
        if problem is None:
            return
        first_problem = first_problem or problem
    if first_problem is None:
        raise UsageError(f"--requests_filepath: {requests_path} holds no requests (it is empty or blank)")
    raise UsageError(f"--requests_filepath: none of the first {checked} lines is a usable request for this endpoint; the first problem: {first_problem}")


def _problem_with(request: APIRequest, request_url: str) -> str | None:
    try:
        endpoint = endpoint_from_url(resolve_url(request_url, request.url))
    except ValueError as error:  # UnsupportedEndpoint, or a malformed or foreign url
        where = "--request_url" if request.url is None else f"line {request.index}'s url"
        return f"{where}: {error}"
    return missing_field_reason(endpoint, request.body)


def check_readable(requests_path: Path) -> None:
    if not requests_path.exists():
        raise UsageError(f"--requests_filepath: no such file: {requests_path}")
    if not requests_path.is_file():
        raise UsageError(f"--requests_filepath: {requests_path} is not a regular file (it is read more than once)")
    try:
        with open(requests_path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise UsageError(f"--requests_filepath: cannot read {requests_path}: {error.strerror}") from None


def check_paths(requests_path: Path, save_path: Path, *, writing: bool = True) -> None:
    """Fail before sending if the input cannot be read, or the output is the input or (`writing`) cannot be appended to."""
    check_readable(requests_path)
    try:
        check_output_path(requests_path, save_path)
    except UsageError as error:
        raise UsageError(f"--save_filepath: {error}") from None
    if not writing:
        return
    try:
        with open(save_path, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise UsageError(f"--save_filepath: cannot write {save_path}: {error.strerror}") from None


def exit_code(stats: RunStats) -> int:
    if stats.stop_reason is not None:
        return EXIT_STOPPED
    if stats.failed or stats.invalid:
        return EXIT_SOME_FAILED
    return EXIT_OK


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the current sys.stderr, not the one there was when logging was set up (tqdm and test
    runners swap it, and a closed old one would swallow every line)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(level: int) -> None:
    logger = logging.getLogger(PROG)
    logger.setLevel(level)
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    requests_path = Path(args.requests_filepath)
    save_path = Path(args.save_filepath) if args.save_filepath else default_save_path(requests_path)
    try:
        settings = settings_from_args(args)
        check_paths(requests_path, save_path, writing=not args.dry_run)
        check_input(requests_path, settings.request_url)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.logging_level)
    if args.dry_run:
        return dry_run(settings, requests_path, save_path, retry_failed=args.retry_failed)
    show_progress = sys.stderr.isatty() and not args.no_progress
    try:
        stats = asyncio.run(_run(settings, args, requests_path, save_path, show_progress))
    except (UsageError, LimiterUnavailable) as error:  # the output refused (in use, not a results file), Redis down
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # only before the signal handlers are in place, or after they are gone
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_STOPPED
    except Exception as error:
        # A bug: report it without the key, which an exception's text could carry.
        scrub = scrubber_for(settings)
        print(scrub("".join(traceback.format_exception(error))), file=sys.stderr)
        print(f"{PROG}: internal error: {scrub(str(error))} (please report it; a rerun resumes)", file=sys.stderr)
        return EXIT_STOPPED
    print(format_summary(stats, save_path=str(save_path)), file=sys.stderr)
    return exit_code(stats)


def dry_run(settings: Settings, requests_path: Path, save_path: Path, *, retry_failed: bool) -> int:
    """Plan the job as it would run now (lines with a row in the results file are skipped); send nothing."""
    try:
        done, _ = prepare_results_file(save_path, retry_failed=retry_failed, repair=False)
    except ResumeError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    estimator = TokenEstimator(settings.token_encoding_name)
    plan = plan_requests(skip_done(read_requests(requests_path), done), settings.request_url, estimator)
    plan.already_done = done.claimed
    print(format_plan(plan, settings.limits, headroom=settings.headroom))
    return EXIT_OK


async def shared_limiter(settings: Settings, redis_url: str | None, limit_key: str | None, requests_path: Path) -> RateLimiter | None:
    """The Redis limiter when a Redis URL is given, checked before anything is sent."""
    url = redis_url or os.environ.get(REDIS_URL_VARIABLE)
    if not url:
        return None
    try:
        from .shared_limiter import RedisLimiter, default_limit_key
    except ImportError:
        raise LimiterUnavailable("--redis_url needs the redis extra: pip install 'rate_limited_processor[redis]'") from None
    key = limit_key or default_limit_key(settings.request_url, _first_model(requests_path), settings.key.reveal() if settings.key else None)
    try:
        limiter = await RedisLimiter.connect(url, key, settings.limits)
    except LimiterUnavailable as error:
        raise LimiterUnavailable(f"--redis_url: {error}") from None
    logging.getLogger(PROG).info("sharing limits through Redis under the key %r", key)
    return limiter


def _first_model(requests_path: Path) -> str | None:
    for item in itertools.islice(read_requests(requests_path), INPUT_CHECK_LINES):
        model = item.body.get("model") if isinstance(item, APIRequest) else None
        if isinstance(model, str):
            return model
    return None


async def _run(settings: Settings, args: argparse.Namespace, requests_path: Path, save_path: Path, show_progress: bool) -> RunStats:
    redirect = contextlib.nullcontext()
    if show_progress:
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm(loggers=[logging.getLogger(PROG)])
    limiter = await shared_limiter(settings, args.redis_url, args.limit_key, requests_path)
    with redirect:
        return await run_file_job(
            settings, requests_path, save_path, limiter=limiter,
            show_progress=show_progress, retry_failed=args.retry_failed,
            handle_signals=True, shutdown_grace=args.shutdown_grace, output_format=args.output_format,
            ordered=args.ordered, ordered_window=args.ordered_window,
        )
