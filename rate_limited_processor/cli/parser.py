"""The parser: argparse in argument groups, each built by a function of its own; every flag also spelled with
dashes, "did you mean" for a mistyped one, errors in one line."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import NoReturn

from ..config import settings as config
from ..config.settings import (
    API_KEY_VARIABLE,
    DEFAULT_LOGGING_LEVEL,
    DEFAULT_ORDERED_WINDOW,
    DEFAULT_REQUEST_URL,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_STATUS_INTERVAL,
    REDIS_URL_VARIABLE,
)
from ..core.arrivals import ARRIVAL_MODES
from ..core.limiter import DEFAULT_BURST_SECONDS
from ..providers.registry import SERVICE_TIERS
from .exits import EXIT_USAGE, PROG
from .values import _batch_lines, _deadline, _fraction, _limit, _logging_level, _non_negative_float, _port, _positive_float, _positive_int

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
    _input_and_output(parser)
    _limits(parser)
    _retries(parser)
    _accounts_and_providers(parser)
    _batch_mode(parser)
    _benchmarking(parser)
    _display(parser)
    return parser


def _input_and_output(parser: argparse.ArgumentParser) -> None:
    """The input, where results go and in what shape, and what a run does with earlier results."""
    add = parser.add_argument_group("input and output").add_argument
    add(
        "--requests_filepath", metavar="FILE",
        help="required (except with --show_limits): JSONL file, one request body per line (an optional 'metadata' field is passed "
        "through, never sent)",
    )
    add("--save_filepath", metavar="FILE", default=None, help="where results are appended (default: <input stem>_results.jsonl beside the input)")
    add(
        "--request_url", default=None, metavar="URL",
        help=f"endpoint every request is POSTed to (OpenAI, Azure, Anthropic, Gemini or OpenAI-compatible) (default: {DEFAULT_REQUEST_URL}, the cookbook's: "
        "the embeddings endpoint); for Batch input, lines' own urls replace its endpoint part, and an API root such as "
        "https://api.openai.com/v1 will do",
    )
    add(
        "--summary_json", metavar="FILE", default=None,
        help="also write the summary as JSON to FILE (replaced atomically; written for exit code 2 too, with the error)",
    )
    add(
        "--output_format", choices=["auto", "cookbook", "batch", "parquet"], default="auto",
        help="result rows as the cookbook writes them, or as the Batch API does; auto: Batch output for Batch input; parquet: "
        "--save_filepath is a directory of Parquet files, embeddings as float32 (needs the 'parquet' extra)",
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
        "--retry_failed", action="store_true",
        help="on a rerun, send again the requests whose rows in the results file are failures (they are removed from it first)",
    )


def _limits(parser: argparse.ArgumentParser) -> None:
    """The limits to stay under, shared or not, and the budget."""
    add = parser.add_argument_group("limits (per minute; auto: learned from the API's headers)").add_argument
    add(
        "--max_requests_per_minute", type=_limit, default="auto", metavar="RPM",
        help="requests-per-minute limit to stay under; auto: learned from the API's x-ratelimit headers (a given number is lowered to "
        "what the API reports)",
    )
    add(
        "--max_tokens_per_minute", "--max_input_tokens_per_minute", type=_limit, default="auto", metavar="TPM",
        help="tokens-per-minute limit to stay under (estimated with tiktoken); for Anthropic, the input-tokens limit (ITPM); auto: "
        "learned as above",
    )
    add(
        "--max_output_tokens_per_minute", type=_limit, default="auto", metavar="OTPM",
        help="output-tokens-per-minute limit (Anthropic's OTPM): each request reserves its max_tokens, and gets back what its answer "
        "did not use; auto: learned from the anthropic-ratelimit headers (none for APIs without such a limit)",
    )
    add("--headroom", type=_fraction, default=1.0, help="send at this fraction of the limits, leaving the rest for other traffic on the same key (e.g. 0.9)")
    add("--token_encoding_name", default=None, help="tiktoken encoding for every request (default: chosen from each request's model)")
    add("--max_in_flight", type=_positive_int, default=config.DEFAULT_MAX_IN_FLIGHT, help="most requests awaiting a response at once")
    add("--burst_seconds", type=_positive_float, default=DEFAULT_BURST_SECONDS, help="bucket capacity in seconds of the limit: how large a burst may be")
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
        "--max_cost_usd", type=_positive_float, default=None, metavar="DOLLARS",
        help="never send a request whose estimated cost would take this run's committed total (what finished requests cost by "
        "their reported usage, plus the estimates of those in flight) past this many US dollars; then stop as Ctrl-C does (exit 3)",
    )
    add(
        "--max_requests_per_day", type=_positive_int, default=None, metavar="N",
        help="requests per UTC day, across reruns of one output; then stop (exit 3) until 00:00 UTC",
    )
    add("--max_tokens_per_day", type=_positive_int, default=None, metavar="T", help="estimated tokens per UTC day, as above")
    add(
        "--price_input_per_mtok", type=_non_negative_float, default=None, metavar="DOLLARS",
        help="US dollars per million input tokens, for every model, instead of the genai-prices data (private deployments, models "
        "it does not know); with --price_output_per_mtok",
    )
    add("--price_output_per_mtok", type=_non_negative_float, default=None, metavar="DOLLARS", help="US dollars per million output tokens, as above")


def _retries(parser: argparse.ArgumentParser) -> None:
    """How often and how long a request is tried, and how long a stop waits."""
    add = parser.add_argument_group("retries and timeouts").add_argument
    add("--max_attempts", type=_positive_int, default=config.DEFAULT_MAX_ATTEMPTS, help="attempts per request in all, first try included")
    add(
        "--request_timeout", type=_positive_float, default=config.DEFAULT_REQUEST_TIMEOUT,
        help="seconds one attempt may take before it is abandoned and retried",
    )
    add(
        "--shutdown_grace", type=_positive_float, default=DEFAULT_SHUTDOWN_GRACE,
        help="after Ctrl-C, SIGTERM or SIGHUP, seconds the requests in flight get to finish (a second Ctrl-C stops at once)",
    )


def _accounts_and_providers(parser: argparse.ArgumentParser) -> None:
    """Whose key, which headers, which accounts; and asking the API for its limits."""
    add = parser.add_argument_group("accounts and providers").add_argument
    add(
        "--api_key", default=None,
        help=f"API key (default: ${API_KEY_VARIABLE}, or the provider's own variable; prefer a variable: flags show in process lists)",
    )
    add(
        "--accounts", metavar="FILE", default=None,
        help="spread the work over several accounts (organisations, keys), each with its own limits: a JSONL file, one account per "
        "line: {\"name\": ..., \"api_key_env\": VARIABLE, \"max_requests_per_minute\": ..., \"headers\": {...}}; see docs/providers-and-accounts.md",
    )
    add(
        "--show_limits", action="store_true",
        help="send one small request to --request_url, print the rate limits its answer's headers state, and exit; nothing is written",
    )
    add(
        "--header", action="append", default=[], metavar="'NAME: VALUE'",
        help="an extra HTTP header for every request, repeatable (e.g. for a gateway); values are never logged",
    )
    add(
        "--service_tier", choices=SERVICE_TIERS, default=None,
        help="set service_tier in every body that has none (flex: half price, slower, its no-capacity 429s retried)",
    )


def _batch_mode(parser: argparse.ArgumentParser) -> None:
    """Online or through the Batch API, and how batches are made and watched."""
    add = parser.add_argument_group("Batch mode").add_argument
    add(
        "--mode", choices=["online", "batch", "auto"], default="online",
        help="online: send each request as fast as the limits allow; batch: send the file through the Batch API (half price, "
        "results within 24 hours); auto: batches, with online as the rescue, every line done by --deadline",
    )
    add(
        "--deadline", type=_deadline, default=None, metavar="DURATION",
        help="with --mode auto, when every line must be done, from now: 45m, 6h, 2d (a rerun keeps the first run's)",
    )
    add(
        "--batch_max_lines", type=_batch_lines, default=None,
        help="with --mode batch, the most lines in one batch (default: the API's most, 50,000 for OpenAI and Azure, 100,000 for Anthropic)",
    )
    add(
        "--batch_poll_interval", type=_positive_float, default=config.DEFAULT_BATCH_POLL_INTERVAL, metavar="SECONDS",
        help="with --mode batch, seconds between asks after each batch's progress",
    )
    add(
        "--batch_fallback", choices=["none", "online"], default=None,
        help="with --mode batch, lines a batch failed or let expire: failure rows (none, the default), or sent online "
        "(online; --mode auto always sends them online)",
    )


def _benchmarking(parser: argparse.ArgumentParser) -> None:
    """How sends are spread, streams timed, and the benchmark report."""
    add = parser.add_argument_group("benchmarking").add_argument
    add(
        "--arrivals", choices=ARRIVAL_MODES, default="even",
        help="how sends are spread: even (paced evenly at the limits, or at --request_rate) or poisson (exponential gaps at "
        "--request_rate, else at the request limit, as benchmark tools send); never above the limits",
    )
    add(
        "--request_rate", type=_positive_float, default=None, metavar="PER_SECOND",
        help="send at most this many requests per second, spread as --arrivals says",
    )
    add(
        "--stream", action="store_true",
        help="ask chat, completions, Responses and Anthropic Messages requests for a stream (with OpenAI's, "
        "stream_options.include_usage) and time its tokens; the results hold the reassembled answer, as unstreamed",
    )
    add(
        "--report", metavar="FILE.json", default=None,
        help="write a benchmark report: latency (and with --stream time to first token, inter-token latency) percentiles, "
        "throughput, errors by status, a per-second timeline",
    )
    add("--report_html", metavar="FILE.html", default=None, help="the same report as one self-contained HTML page with charts")


def _display(parser: argparse.ArgumentParser) -> None:
    """What the terminal shows, the log level, the version, and Prometheus metrics."""
    add = parser.add_argument_group("display").add_argument
    add("--version", action="version", version=f"{PROG} {_version()}")
    add(
        "--logging_level", type=_logging_level, default=DEFAULT_LOGGING_LEVEL,
        help="DEBUG, INFO (a line per request sent, retried and done), WARNING (only what needs you), ERROR, or a number",
    )
    add("--no_progress", action="store_true", help="no progress bar, even on a terminal (status lines follow --status_interval)")
    add(
        "--status_interval", type=_non_negative_float, default=DEFAULT_STATUS_INTERVAL, metavar="SECONDS",
        help="without a progress bar (stderr not a terminal, or --no_progress), print a one-line status this often; with one, only "
        "after an interval with retries, 429s or failures; 0: never",
    )
    add(
        "--metrics_port", type=_port, default=None, metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics while the run goes (needs the 'metrics' extra; 0: a free port)",
    )
    add("--metrics_host", default="127.0.0.1", metavar="HOST", help="with --metrics_port, the address to listen on (0.0.0.0: every interface)")
