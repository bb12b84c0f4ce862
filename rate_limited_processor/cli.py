"""The command line: the cookbook script's flags, plus a few more. A thin layer over `run_file_job`.

Exit codes (also in the README):
  0  every request succeeded
  1  the run finished, but some requests failed or some lines were invalid (see the output file)
  2  usage or input error: nothing was sent
  3  stopped early (bad API key, no quota, interrupted, output unwritable): a rerun sends what is left

Every flag may also be spelled with dashes (`--requests-filepath`). The checks before sending (the URL,
the input, the paths) are in `preflight.py`; `--show_limits` is in `probe.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from yarl import URL

from .base.atomic_write import write_json_atomically, write_text_atomically
from .base.errors import LimiterUnavailable, ResumeError, UsageError
from .config import settings as config
from .config.credentials import scrubber_for
from .config.settings import (
    API_KEY_VARIABLE,
    DEFAULT_LOGGING_LEVEL,
    DEFAULT_ORDERED_WINDOW,
    DEFAULT_REQUEST_URL,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_STATUS_INTERVAL,
    FROM_ENVIRONMENT,
    REDIS_URL_VARIABLE,
    Settings,
    key_variable_for,
)
from .core.arrivals import ARRIVAL_MODES
from .core.budget import Budget
from .core.costs import PriceBook
from .core.limiter import DEFAULT_BURST_SECONDS, Limits
from .core.retry_policy import RetryPolicy
from .core.stats import RunStats
from .files.request_io import read_requests
from .files.resume import prepare_results_file
from .files.side_files import JOB_SIDECARS, RunFile, check_apart, job_files
from .jobs.batch_job import SIDECAR_KIND as BATCH_SIDECAR
from .jobs.batch_job import BatchOptions, run_batch_job
from .jobs.file_job import check_output_path, default_save_path, run_file_job, skip_done
from .jobs.planning import format_plan, plan_requests
from .jobs.preflight import check_input, check_key_for_provider, check_readable, check_request_url, check_writable, first_model
from .jobs.probe import format_limits, probe_body, probe_limits
from .providers.endpoints import endpoint_from_url
from .providers.registry import provider_for
from .providers.token_estimation import TokenEstimator
from .transport.http import AiohttpTransport
from .ui.report import RunReport
from .ui.summary import format_summary, summary_record
from .ui.terminal import hangup_proof_stderr

if TYPE_CHECKING:
    from .engine.shared_limiter import RedisLimiterFactory
    from .ui.metrics import MetricsServer

__all__ = ["main", "build_parser", "settings_from_args", "exit_code", "EXIT_MEANINGS", "UsageError"]

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
#: What each exit code means, for --help, the README and --summary_json.
EXIT_MEANINGS = {
    EXIT_OK: "every request succeeded",
    EXIT_SOME_FAILED: "the run finished, but some requests failed or some lines were invalid (the output file says which and why)",
    EXIT_USAGE: "usage or input error, found before anything was sent",
    EXIT_STOPPED: "stopped early (bad key, no quota, interrupted, output unwritable); a rerun sends what is left",
}

PROG = "rate_limited_processor"
#: How alike a mistyped flag must be to a real one to be suggested ("--max_request_per_minute").
_FLAG_SIMILARITY = 0.68


def _version() -> str:
    try:
        return metadata.version("rate_limited_processor")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


#: The end of --help: two commands to copy, and what the exit codes mean.
HELP_EPILOG = f"""examples:
  # against the project's mock API, started first with
  #   python -m {PROG}.mock_server
  python -m {PROG} \\
    --requests_filepath examples/chat_requests.jsonl \\
    --request_url http://127.0.0.1:8000/v1/chat/completions
  # the real API, the key from $OPENAI_API_KEY, limits learned from its headers
  python -m {PROG} --requests_filepath requests.jsonl \\
    --request_url https://api.openai.com/v1/chat/completions

exit codes: 0 all succeeded; 1 some failed; 2 usage or input error;
  3 stopped early (rerun to finish)
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it has none worth printing (its help then says what happens); keeps the
    epilog's examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, kinder to a newcomer: a dashed spelling of every flag (`--requests-filepath`), "did you mean"
    for a mistyped flag, and errors as one line."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        given = list(sys.argv[1:] if args is None else args)
        self._spelled: dict[str, str] = {}  # the underscored form of a flag -> as the user typed it
        canonical = []
        for position, token in enumerate(given):
            if token == "--":  # everything after it is a value
                canonical.extend(given[position:])
                break
            canonical.append(self._underscored(token))
        return super().parse_known_args(canonical, namespace)

    def _underscored(self, token: str) -> str:
        if not token.startswith("--") or len(token) == 2:
            return token
        name, equals, value = token.partition("=")
        underscored = "--" + name[2:].replace("-", "_")
        self._spelled[underscored] = name
        return underscored + equals + value

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._unknown(extras))
        return parsed

    def _unknown(self, extras: list[str]) -> str:
        flags = [token for token in extras if token.startswith("-")]
        if not flags:
            return f"unexpected argument {extras[0]!r} (each value follows its flag, as in --requests_filepath FILE)"
        name = flags[0].partition("=")[0]
        known = [option for action in self._actions for option in action.option_strings if option.startswith("--")]
        close = difflib.get_close_matches(name, known, n=1, cutoff=_FLAG_SIMILARITY)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"unknown flag {self._spelled.get(name, name)}{hint}"

    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the user sees exactly what is wrong.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"python -m {PROG}",
        usage="%(prog)s --requests_filepath FILE\n       --request_url URL [options]",
        description="Send a JSONL file of OpenAI (or compatible, or Anthropic) API requests as fast\n"
        "as your rate limits allow, and no faster. Every flag may also be written with\n"
        "dashes (--requests-filepath); docs/flags.md says more about each.",
        formatter_class=_HelpFormatter,
        epilog=HELP_EPILOG,
    )
    group = parser.add_argument_group
    io = group("input and output").add_argument
    limits = group("limits (per minute; auto: learned from the API's headers)").add_argument
    retries = group("retries and timeouts").add_argument
    accounts = group("accounts and providers").add_argument
    batch = group("Batch mode").add_argument
    bench = group("benchmarking").add_argument
    display = group("display").add_argument
    display("--version", action="version", version=f"{PROG} {_version()}")
    io(
        "--requests_filepath", metavar="FILE",
        help="required (except with --show_limits): JSONL file, one request body per line (an optional 'metadata' field is passed "
        "through, never sent)",
    )
    io("--save_filepath", metavar="FILE", default=None, help="where results are appended (default: <input stem>_results.jsonl beside the input)")
    io(
        "--request_url", default=None, metavar="URL",
        help=f"endpoint every request is POSTed to (OpenAI, Azure or OpenAI-compatible) (default: {DEFAULT_REQUEST_URL}, the cookbook's: "
        "the embeddings endpoint); for Batch input, lines' own urls replace its endpoint part, and an API root such as "
        "https://api.openai.com/v1 will do",
    )
    accounts("--api_key", default=None, help=f"API key (default: ${API_KEY_VARIABLE}; prefer the variable: flags show in process lists)")
    limits(
        "--max_requests_per_minute", type=_limit, default="auto", metavar="RPM",
        help="requests-per-minute limit to stay under; auto: learned from the API's x-ratelimit headers (a given number is lowered to "
        "what the API reports)",
    )
    limits(
        "--max_tokens_per_minute", "--max_input_tokens_per_minute", type=_limit, default="auto", metavar="TPM",
        help="tokens-per-minute limit to stay under (estimated with tiktoken); for Anthropic, the input-tokens limit (ITPM); auto: "
        "learned as above",
    )
    limits(
        "--max_output_tokens_per_minute", type=_limit, default="auto", metavar="OTPM",
        help="output-tokens-per-minute limit (Anthropic's OTPM): each request reserves its max_tokens, and gets back what its answer "
        "did not use; auto: learned from the anthropic-ratelimit headers (none for APIs without such a limit)",
    )
    accounts(
        "--accounts", metavar="FILE", default=None,
        help="spread the work over several accounts (organisations, keys), each with its own limits: a JSONL file, one account per "
        "line: {\"name\": ..., \"api_key_env\": VARIABLE, \"max_requests_per_minute\": ..., \"headers\": {...}}; see the README",
    )
    limits("--headroom", type=_fraction, default=1.0, help="send at this fraction of the limits, leaving the rest for other traffic on the same key (e.g. 0.9)")
    limits("--token_encoding_name", default=None, help="tiktoken encoding for every request (default: chosen from each request's model)")
    retries("--max_attempts", type=_positive_int, default=config.DEFAULT_MAX_ATTEMPTS, help="attempts per request in all, first try included")
    display(
        "--logging_level", type=_logging_level, default=DEFAULT_LOGGING_LEVEL,
        help="DEBUG, INFO (a line per request sent, retried and done), WARNING (only what needs you), ERROR, or a number",
    )
    retries(
        "--request_timeout", type=_positive_float, default=config.DEFAULT_REQUEST_TIMEOUT,
        help="seconds one attempt may take before it is abandoned and retried",
    )
    limits("--max_in_flight", type=_positive_int, default=config.DEFAULT_MAX_IN_FLIGHT, help="most requests awaiting a response at once")
    limits("--burst_seconds", type=_positive_float, default=DEFAULT_BURST_SECONDS, help="bucket capacity in seconds of the limit: how large a burst may be")
    bench(
        "--arrivals", choices=ARRIVAL_MODES, default="even",
        help="how sends are spread: even (paced evenly at the limits, or at --request_rate) or poisson (exponential gaps at "
        "--request_rate, else at the request limit, as benchmark tools send); never above the limits",
    )
    bench(
        "--request_rate", type=_positive_float, default=None, metavar="PER_SECOND",
        help="send at most this many requests per second, spread as --arrivals says",
    )
    bench(
        "--stream", action="store_true",
        help="ask chat, completions, Responses and Anthropic Messages requests for a stream (with OpenAI's, "
        "stream_options.include_usage) and time its tokens; the results hold the reassembled answer, as unstreamed",
    )
    display("--no_progress", action="store_true", help="no progress bar, even on a terminal (status lines follow --status_interval)")
    display(
        "--status_interval", type=_non_negative_float, default=DEFAULT_STATUS_INTERVAL, metavar="SECONDS",
        help="without a progress bar (stderr not a terminal, or --no_progress), print a one-line status this often; with one, only "
        "after an interval with retries, 429s or failures; 0: never",
    )
    io(
        "--summary_json", metavar="FILE", default=None,
        help="also write the summary as JSON to FILE (replaced atomically; written for exit code 2 too, with the error)",
    )
    bench(
        "--report", metavar="FILE.json", default=None,
        help="write a benchmark report: latency (and with --stream time to first token, inter-token latency) percentiles, "
        "throughput, errors by status, a per-second timeline",
    )
    bench("--report_html", metavar="FILE.html", default=None, help="the same report as one self-contained HTML page with charts")
    accounts(
        "--show_limits", action="store_true",
        help="send one small request to --request_url, print the rate limits its answer's headers state, and exit; nothing is written",
    )
    io(
        "--output_format", choices=["auto", "cookbook", "batch", "parquet"], default="auto",
        help="result rows as the cookbook writes them, or as the Batch API does; auto: Batch output for Batch input; parquet: "
        "--save_filepath is a directory of Parquet files, embeddings as float32 (needs the 'parquet' extra)",
    )
    accounts(
        "--header", action="append", default=[], metavar="'NAME: VALUE'",
        help="an extra HTTP header for every request, repeatable (e.g. for a gateway); values are never logged",
    )
    io(
        "--dry_run", action="store_true",
        help="read and check every line, estimate tokens, and print the count, which limit binds and the expected duration; send "
        "nothing",
    )
    io(
        "--ordered", action="store_true",
        help="write results in input order instead of completion order (finished results wait for earlier ones, up to --ordered_window"
        " of them)",
    )
    io(
        "--ordered_window", type=_positive_int, default=DEFAULT_ORDERED_WINDOW,
        help="with --ordered, the most finished results held back; a request slower than the rest holds up at most this many",
    )
    limits(
        "--redis_url", default=None,
        help=f"share the limits with every process using the same Redis and limit key, e.g. redis://host:6379/0 (default: "
        f"${REDIS_URL_VARIABLE}; needs the 'redis' extra)",
    )
    limits(
        "--limit_key", default=None,
        help="the name processes share limits under (default: the API's host, the first request's model and a hash of the API key)",
    )
    display(
        "--metrics_port", type=_port, default=None, metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics while the run goes (needs the 'metrics' extra; 0: a free port)",
    )
    display("--metrics_host", default="127.0.0.1", metavar="HOST", help="with --metrics_port, the address to listen on (0.0.0.0: every interface)")
    io(
        "--retry_failed", action="store_true",
        help="on a rerun, send again the requests whose rows in the results file are failures (they are removed from it first)",
    )
    retries(
        "--shutdown_grace", type=_positive_float, default=DEFAULT_SHUTDOWN_GRACE,
        help="after Ctrl-C, SIGTERM or SIGHUP, seconds the requests in flight get to finish (a second Ctrl-C stops at once)",
    )
    limits(
        "--max_cost_usd", type=_positive_float, default=None, metavar="DOLLARS",
        help="never send a request whose estimated cost would take this run's committed total (what finished requests cost by "
        "their reported usage, plus the estimates of those in flight) past this many US dollars; then stop as Ctrl-C does (exit 3)",
    )
    limits(
        "--price_input_per_mtok", type=_non_negative_float, default=None, metavar="DOLLARS",
        help="US dollars per million input tokens, for every model, instead of the genai-prices data (private deployments, models "
        "it does not know); with --price_output_per_mtok",
    )
    limits("--price_output_per_mtok", type=_non_negative_float, default=None, metavar="DOLLARS", help="US dollars per million output tokens, as above")
    batch(
        "--mode", choices=["online", "batch"], default="online",
        help="online: send each request as fast as the limits allow; batch: send the file through the Batch API (half price, "
        "results within 24 hours)",
    )
    batch(
        "--batch_max_lines", type=_batch_lines, default=config.DEFAULT_BATCH_MAX_LINES,
        help="with --mode batch, the most lines in one batch (the API's own limit is 50,000 lines and 200 MB)",
    )
    batch(
        "--batch_poll_interval", type=_positive_float, default=config.DEFAULT_BATCH_POLL_INTERVAL, metavar="SECONDS",
        help="with --mode batch, seconds between asks after each batch's progress",
    )
    batch(
        "--batch_fallback", choices=["none", "online"], default="none",
        help="with --mode batch, lines a batch failed or let expire: failure rows (none), or sent online (online)",
    )
    return parser


def _batch_lines(text: str) -> int:
    value = _positive_int(text)
    if value > config.BATCH_API_MAX_LINES:
        raise argparse.ArgumentTypeError(f"the Batch API takes at most {config.BATCH_API_MAX_LINES:,} lines in a batch, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port from 0 to 65535 is needed, got {text!r}")
    return value


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


def _non_negative_float(text: str) -> float:
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass
    return _positive_float(text)


def prices_from_args(args: argparse.Namespace, request_url: str) -> PriceBook:
    """The run's prices: the flags' for every model if given, else the price data's; batch prices in batch mode."""
    try:
        return PriceBook(
            request_url=request_url, batch=args.mode == "batch",
            input_per_mtok=args.price_input_per_mtok, output_per_mtok=args.price_output_per_mtok,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


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
        )
    except ValueError as error:
        message = str(error)
        if message.startswith("api_key "):  # say where the key came from: the flag, or the variable
            message = ("--api_key" if args.api_key else f"${key_variable_for(request_url)}") + message.removeprefix("api_key")
        raise UsageError(message) from None
    return settings


def _parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise UsageError(f"--header: expected 'Name: value', got {name.strip() or text!r}")  # never echo a value
    return name.strip(), value.strip()


def exit_code(stats: RunStats) -> int:
    if stats.stop_reason is not None:
        return EXIT_STOPPED
    if stats.failed or stats.invalid or stats.failed_earlier:
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.requests_filepath is None and not args.show_limits:
        parser.error("--requests_filepath is required: the JSONL file of requests to send")
    with hangup_proof_stderr():  # a closed terminal (SIGHUP) must not cost the answers in flight
        return _Command(args).run()


class _Command:
    """One invocation: the checks, then the run (or the dry run, or --show_limits), then the exit code.

    Kept together so that every way out of a run, a refusal included, writes --summary_json when asked.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.requests_path = Path(args.requests_filepath) if args.requests_filepath is not None else None
        self.save_path: Path | None = None
        if self.requests_path is not None:
            self.save_path = Path(args.save_filepath) if args.save_filepath else default_save_path(self.requests_path)
        self.summary_path = Path(args.summary_json) if args.summary_json else None
        self.settings: Settings | None = None
        self.prices: PriceBook | None = None

    def run(self) -> int:
        args = self.args
        try:
            self.check_apart()
        except UsageError as error:
            self.summary_path = None  # a refusal for the files themselves writes nothing, not even the summary
            return self.refuse(error)
        if self.summary_path is not None:
            try:
                check_writable(self.summary_path, "--summary_json")
            except UsageError as error:
                self.summary_path = None  # it cannot be written, so it is not
                return self.refuse(error)
        try:
            self.settings = settings = settings_from_args(args)
            if args.show_limits:
                _check_key(settings)
                return self.show_limits(settings)
            assert self.requests_path is not None and self.save_path is not None
            self.prices = prices = prices_from_args(args, settings.request_url)
            self.check_paths(self.requests_path, self.save_path)
            check_input(self.requests_path, settings.request_url, url_given=args.request_url is not None)
            if args.mode == "batch":
                _check_batch_mode(args, settings.request_url)
            if not args.dry_run:
                _check_key(settings)
                _check_redis_extra(args.redis_url)
                _check_metrics(args)
                self.check_budget(prices, self.requests_path)
        except UsageError as error:
            return self.refuse(error)
        configure_logging(args.logging_level)
        if args.dry_run:
            return dry_run(settings, self.requests_path, self.save_path, retry_failed=args.retry_failed, prices=prices, parquet=args.output_format == "parquet")
        show_progress = sys.stderr.isatty() and not args.no_progress
        try:
            stats = asyncio.run(_run(settings, args, self.requests_path, self.save_path, show_progress, prices))
        except (UsageError, LimiterUnavailable) as error:  # the output refused (in use, not a results file), Redis down
            return self.refuse(error)
        except OSError as error:  # the system refused a file (a full disk taking the lock, closing the index): not a bug
            where = f"{error.filename}: " if error.filename else ""
            message = f"{where}{error.strerror or error}"
            print(f"{PROG}: error: {message} (a rerun resumes)", file=sys.stderr)
            return self.finish(EXIT_STOPPED, None, error=message)
        except KeyboardInterrupt:  # only before the signal handlers are in place, or after they are gone
            print(f"{PROG}: interrupted", file=sys.stderr)
            return self.finish(EXIT_STOPPED, None, error="interrupted before the run started or after it ended")
        except Exception as error:
            # A bug: report it without the key, which an exception's text could carry.
            scrub = scrubber_for(settings)
            print(scrub("".join(traceback.format_exception(error))), file=sys.stderr)
            print(f"{PROG}: internal error: {scrub(str(error))} (please report it; a rerun resumes)", file=sys.stderr)
            return self.finish(EXIT_STOPPED, None, error=f"internal error: {scrub(str(error))}")
        written = str(self.save_path) if self.save_path.exists() else None  # a run that wrote no row leaves no file
        print(format_summary(stats, save_path=written, prices=prices, max_cost_usd=args.max_cost_usd, given=settings.limits), file=sys.stderr)
        return self.finish(exit_code(stats), stats)

    def check_budget(self, prices: PriceBook, requests_path: Path) -> None:
        """A budget needs prices: refuse one that the first request's model has none for, before sending anything."""
        if self.args.max_cost_usd is None:
            return
        model = first_model(requests_path)
        if prices.price(model) is None:
            raise UsageError(Budget(self.args.max_cost_usd, prices).no_price_reason({"model": model} if model else {}))

    def check_paths(self, requests_path: Path, save_path: Path) -> None:
        """The input can be read, and the outputs can be written (checked without creating them)."""
        check_readable(requests_path)
        parquet = self.args.output_format == "parquet"
        try:  # a dry run writes nothing, but reads the results file: it must still be one
            if parquet:
                from .files.parquet import check_parquet_output

                check_parquet_output(save_path)
            else:
                check_output_path(requests_path, save_path)
        except UsageError as error:
            raise UsageError(f"--save_filepath: {error}") from None
        if self.args.dry_run:
            return
        if not parquet:
            check_writable(save_path, "--save_filepath")
        for flag in ("--report", "--report_html"):
            path = getattr(self.args, flag[2:])
            if path is not None:
                check_writable(Path(path), flag)

    def check_apart(self) -> None:
        """No file the run writes is another of its files (`side_files`): checked before anything is written."""
        if self.requests_path is None or self.save_path is None:  # --show_limits: nothing is written
            return
        sidecars = (*JOB_SIDECARS, BATCH_SIDECAR) if self.args.mode == "batch" else JOB_SIDECARS
        files = job_files(self.requests_path, self.save_path, sidecars=sidecars)
        if self.args.accounts is not None:
            files.append(RunFile("--accounts", Path(self.args.accounts)))
        for flag, given in (("--summary_json", self.summary_path), ("--report", self.args.report), ("--report_html", self.args.report_html)):
            if given is not None:
                files.append(RunFile(flag, Path(given), written=True))
        check_apart(files)

    def refuse(self, error: Exception) -> int:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return self.finish(EXIT_USAGE, None, error=str(error))

    def finish(self, code: int, stats: RunStats | None, *, error: str | None = None) -> int:
        if self.summary_path is not None and not (self.args.dry_run or self.args.show_limits):  # those run no job
            settings = self.settings
            record = summary_record(
                stats, exit_code=code, exit_meaning=EXIT_MEANINGS[code], error=error,
                given=settings.limits if settings is not None else Limits(None, None),
                headroom=settings.headroom if settings is not None else 1.0,
                requests_path=str(self.requests_path) if self.requests_path is not None else None,
                save_path=str(self.save_path) if self.save_path is not None and stats is not None else None,
                prices=self.prices if stats is not None else None, max_cost_usd=self.args.max_cost_usd,
            )
            try:
                write_json_atomically(self.summary_path, record)
            except OSError as write_error:
                cause = write_error.strerror or write_error
                print(f"{PROG}: error: --summary_json: cannot write {self.summary_path}: {cause}{self.drop_summary()}", file=sys.stderr)
        return code

    def drop_summary(self) -> str:
        """An earlier run's summary must not stand for this run, which could not write its own: removed, and said."""
        assert self.summary_path is not None
        try:
            os.unlink(self.summary_path)
        except FileNotFoundError:
            return ""
        except OSError as error:
            return f"; the earlier summary there could not be removed either ({error.strerror or error}): it is not this run's"
        return "; the earlier summary there was removed (it was another run's)"

    def show_limits(self, settings: Settings) -> int:
        """One small request; its rate-limit headers in plain words. Exit 0 when the answer said something."""
        try:
            endpoint = endpoint_from_url(settings.request_url)
        except ValueError as error:
            raise UsageError(f"--show_limits: --request_url must name an endpoint: {error}") from None
        model = None
        if self.requests_path is not None:
            check_readable(self.requests_path)
            model = first_model(self.requests_path)
        body = probe_body(endpoint, model)

        async def probe() -> Any:
            transport = AiohttpTransport(max_connections=1)
            try:
                return await probe_limits(settings, body, transport)
            finally:
                await transport.aclose()

        seen = asyncio.run(probe())
        text = format_limits(seen, url=settings.request_url, model=body.get("model"), default_model=model is None)
        if seen.succeeded or seen.any_header:
            print(text)
            return EXIT_OK
        print(f"{PROG}: error: {text}", file=sys.stderr)  # no answer, or a refusal that says nothing about limits (a bad key)
        return EXIT_STOPPED


def _check_batch_mode(args: argparse.Namespace, request_url: str) -> None:
    """What --mode batch does not do, said before anything is sent."""
    if args.ordered:
        raise UsageError("--ordered is for --mode online: a batch's results come back when the batch ends")
    if args.output_format == "parquet":
        raise UsageError("--output_format parquet is for --mode online: --mode batch writes JSONL rows")
    if args.accounts is not None:
        raise UsageError("--accounts is for --mode online: --mode batch sends the file through one account's Batch API")
    if not provider_for(request_url).speaks_batch_api:
        raise UsageError("--mode batch speaks OpenAI's Batch API; Anthropic's Message Batches API is not supported: use --mode online")


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
    if args.mode == "batch":
        raise UsageError("--metrics_port is for --mode online: a batch run waits on the Batch API, with nothing to watch per request")
    from .ui.metrics import MetricsServer

    MetricsServer(args.metrics_port)  # refuses, naming the extra, when prometheus-client is missing


def dry_run(
    settings: Settings, requests_path: Path, save_path: Path, *, retry_failed: bool, prices: PriceBook | None = None, parquet: bool = False,
) -> int:
    """Plan the job as it would run now (lines with a row in the results file are skipped); send nothing."""
    prepare = prepare_results_file
    if parquet:
        from .files.parquet import prepare_parquet_results as prepare
    try:
        done, _ = prepare(save_path, retry_failed=retry_failed, repair=False)
    except ResumeError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    estimator = TokenEstimator(settings.token_encoding_name)
    plan = plan_requests(skip_done(read_requests(requests_path), done), settings.request_url, estimator)
    plan.already_done = done.claimed
    print(format_plan(plan, settings.limits, headroom=settings.headroom, prices=prices))
    return EXIT_OK


async def shared_limiters(settings: Settings, redis_url: str | None, limit_key: str | None) -> RedisLimiterFactory | None:
    """Limiters in Redis, one key per account and model, when a Redis URL is given; checked before anything is sent."""
    url = redis_url or os.environ.get(REDIS_URL_VARIABLE)
    if not url:
        return None
    from .engine.shared_limiter import RedisLimiterFactory  # noqa: F811 (the redis extra, loaded only when used)

    try:
        factory = await RedisLimiterFactory.connect(url, settings.request_url, limit_key=limit_key, accounts=max(1, len(settings.accounts)))
    except LimiterUnavailable as error:
        raise LimiterUnavailable(f"--redis_url: {error}") from None
    return factory


async def serve_metrics(args: argparse.Namespace, prices: PriceBook) -> MetricsServer | None:
    """/metrics listening (--metrics_port), before anything is sent; None without the flag."""
    if args.metrics_port is None:
        return None
    from .ui.metrics import MetricsServer  # noqa: F811 (the metrics extra, loaded only when used)

    served = await MetricsServer(args.metrics_port, host=args.metrics_host, prices=prices).start()
    logging.getLogger(PROG).info("serving Prometheus metrics at %s", served.url)
    return served


async def _run(settings: Settings, args: argparse.Namespace, requests_path: Path, save_path: Path, show_progress: bool, prices: PriceBook) -> RunStats:
    redirect = contextlib.nullcontext()
    if show_progress:
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm(loggers=[logging.getLogger(PROG)])
    budget = Budget(args.max_cost_usd, prices) if args.max_cost_usd is not None else None
    if args.mode == "batch":
        options = BatchOptions(max_lines=args.batch_max_lines, poll_interval=args.batch_poll_interval, fallback=args.batch_fallback)
        with redirect:
            return await run_batch_job(
                settings, requests_path, save_path, options=options, prices=prices, budget=budget, output_format=args.output_format,
                retry_failed=args.retry_failed, handle_signals=True, show_progress=show_progress, status_interval=args.status_interval or None,
            )
    factory = await shared_limiters(settings, args.redis_url, args.limit_key)
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
                watch=served.watch if served is not None else None,
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
    from .ui.report_html import render_html

    for path, render in ((json_path, _report_json), (html_path, render_html)):
        if path is None:
            continue
        try:
            write_text_atomically(Path(path), render(record))
        except OSError as error:
            print(f"{PROG}: error: cannot write the report {path}: {error.strerror or error}", file=sys.stderr)
