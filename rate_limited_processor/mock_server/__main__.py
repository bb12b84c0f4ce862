"""Rehearse a job against your tier's limits on loopback, before paying for it.

Usage::

    python -m rate_limited_processor.mock_server --port 8000 \\
        --requests_per_minute 500 --tokens_per_minute 200000 --token_counting chars \\
        --latency 0.2 --fault 500=0.02 --fault reset=0.01 --seed 1 \\
        --time_to_first_token 0.3 --inter_token_gap 0.02      # for requests that ask for a stream

then point the processor at the printed base URL (e.g. --request_url http://127.0.0.1:8000/v1/chat/completions).
Ctrl-C stops the server and prints what it served, by status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from .config import DEFAULT_MODEL, MockConfig
from .faults import FaultKind, parse_fault
from .record import ServedLog
from .server import MockServer

__all__ = ["main", "build_parser", "config_from_args", "describe"]

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"


def _fault(text: str) -> tuple[FaultKind, float]:
    try:
        return parse_fault(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rate_limited_processor.mock_server",
        description="An OpenAI-like API on loopback with your tier's rate limits, latency and injected faults. "
        "Prints its base URL, serves until Ctrl-C, then prints how many requests it answered with each status.",
    )
    add = parser.add_argument
    add("--host", default=DEFAULT_HOST, help=f"interface to listen on (default: {DEFAULT_HOST})")
    add("--port", type=int, default=DEFAULT_PORT, help=f"port; 0 picks a free one (default: {DEFAULT_PORT})")
    add("--requests_per_minute", type=float, default=None, help="RPM limit (default: unlimited)")
    add("--requests_per_day", type=int, default=None, help="Gemini's requests per Pacific day (default: unlimited)")
    add("--tokens_per_minute", type=float, default=None, help="TPM limit; for /v1/messages, Anthropic's input tokens (default: unlimited)")
    add(
        "--output_tokens_per_minute", type=float, default=None,
        help="Anthropic's output-token limit for /v1/messages: max_tokens reserved, refunded to what the answer used (default: unlimited)",
    )
    add("--output_tokens", type=int, default=40, help="output tokens each /v1/messages answer generates, at most its max_tokens (default: 40)")
    add(
        "--burst_seconds",
        type=float,
        default=1.0,
        help="bucket capacity in seconds of each limit: 60 admits a whole minute's worth at once, 1 (like "
        "OpenAI) one second's (default: 1)",
    )
    add(
        "--token_counting",
        choices=("tiktoken", "chars"),
        default="tiktoken",
        help="how a request is charged against TPM: 'tiktoken' counts tokens as the client's estimator does, "
        "'chars' counts characters / 4 as OpenAI's limiter does; both add the completion budget "
        "(default: tiktoken)",
    )
    add("--token_encoding_name", default=None, help="force one tiktoken encoding (default: chosen by model)")
    add("--latency", type=float, default=0.0, help="seconds before each successful answer (default: 0)")
    add("--latency_jitter", type=float, default=0.0, help="up to this many extra seconds at random (default: 0)")
    add(
        "--latency_sigma", type=float, default=0.0, metavar="SIGMA",
        help="draw each latency from a lognormal whose median is --latency, with this sigma (1.0: one answer in twenty over 5x the median) "
        "(default: 0, no draw)",
    )
    add(
        "--output_burst_seconds", type=float, default=None, metavar="SECONDS",
        help="the output-token bucket's capacity in seconds of --output_tokens_per_minute (default: a minute; 1 enforces it over one second)",
    )
    add(
        "--time_to_first_token", type=float, default=0.0, metavar="SECONDS",
        help="a request asking for a stream (\"stream\": true) gets its first event after the latency and its first token this "
        "much later (default: 0)",
    )
    add("--inter_token_gap", type=float, default=0.0, metavar="SECONDS", help="seconds between two tokens of a streamed answer (default: 0)")
    add(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="KIND=P",
        help="inject a fault into each request with probability P; repeat for several kinds (default: none). "
        "Kinds: " + ", ".join(kind.value for kind in FaultKind),
    )
    add("--faults_after", type=int, default=0, help="never fault the first N requests (default: 0)")
    add(
        "--flex_unavailable", type=float, default=0.0, metavar="P",
        help='chance that a "service_tier": "flex" request gets 429 resource_unavailable (default: 0)',
    )
    add("--seed", type=int, default=0, help="seed for faults and latency jitter, to replay a run (default: 0)")
    add(
        "--api_key",
        default=None,
        help="require this key as 'Authorization: Bearer KEY' ('api-key: KEY' on Azure paths, 'x-api-key: KEY' on /v1/messages) "
        "(default: no key required)",
    )
    add(
        "--retry_after_header",
        action="store_true",
        help="send retry-after and retry-after-ms headers with rate-limit 429s (default: off; OpenAI often omits them)",
    )
    add(
        "--rate_limit_style",
        choices=("openai", "silent", "html"),
        default="openai",
        help="how a rate-limit 429 reads: 'openai' (OpenAI's body, with the exact wait), 'silent' (no hint at all), "
        "'html' (a gateway's HTML page, as nginx sends); the last two send no x-ratelimit headers (default: openai)",
    )
    add("--rate_limit_hint", type=float, default=None, help="with openai-style 429s, hint this many seconds instead of the exact wait")
    add(
        "--no_ratelimit_headers",
        action="store_true",
        help="send no x-ratelimit-* headers, like a gateway that hides the limits (default: send them)",
    )
    add("--model", default=DEFAULT_MODEL, help=f"model named when a request names none (default: {DEFAULT_MODEL})")
    add("--batch_validation_seconds", type=float, default=0.5, help="the Batch API: seconds a new batch validates (default: 0.5)")
    add("--batch_processing_seconds", type=float, default=5.0, help="the Batch API: seconds from a batch's creation to its end (default: 5)")
    add("--batch_failed_lines", type=float, default=0.0, help="the Batch API: fraction of lines answered 500 (default: 0)")
    add("--batch_never_ends", action="store_true", help="Message Batches: batches stay in progress until cancelled")
    add("--batch_create_delay", type=float, default=0.0, help="Message Batches: seconds the create's answer is held after the batch exists")
    add(
        "--batch_create_timeouts", type=int, default=0,
        help="batch APIs: the first N uploads or batch creates are made, then answered 504 by a gateway (default: 0)",
    )
    add("--batch_expired_lines", type=float, default=0.0, help="the Batch API: fraction of lines left to expire; their batch ends expired (default: 0)")
    add(
        "--batch_stall_at", type=float, default=1.0,
        help="the Batch API: fraction of a batch's lines done before it stalls; below 1 it never ends on its own (default: 1)",
    )
    add("--batch_cancelling_seconds", type=float, default=0.0, help="the Batch API: seconds a cancelled batch is cancelling (default: 0)")
    add(
        "--batch_enqueued_token_limit", type=int, default=None,
        help="the Batch API: tokens a model's running batches may hold; a batch past it fails with token_limit_exceeded (default: none)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> MockConfig:
    faults: dict[str, float] = {}
    for kind, probability in args.fault:
        faults[kind.value] = probability
    return MockConfig(
        requests_per_minute=args.requests_per_minute,
        requests_per_day=args.requests_per_day,
        tokens_per_minute=args.tokens_per_minute,
        output_tokens_per_minute=args.output_tokens_per_minute,
        output_tokens=args.output_tokens,
        burst_seconds=args.burst_seconds,
        token_counting=args.token_counting,
        token_encoding_name=args.token_encoding_name,
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        latency_sigma=args.latency_sigma,
        output_burst_seconds=args.output_burst_seconds,
        time_to_first_token=args.time_to_first_token,
        inter_token_gap=args.inter_token_gap,
        faults=faults,
        faults_after=args.faults_after,
        flex_unavailable=args.flex_unavailable,
        seed=args.seed,
        api_key=args.api_key,
        retry_after_header=args.retry_after_header,
        ratelimit_headers=not args.no_ratelimit_headers,
        rate_limit_style=args.rate_limit_style,
        rate_limit_hint=args.rate_limit_hint,
        model=args.model,
        batch_validation_seconds=args.batch_validation_seconds,
        batch_processing_seconds=args.batch_processing_seconds,
        batch_failed_lines=args.batch_failed_lines,
        batch_expired_lines=args.batch_expired_lines,
        batch_never_ends=args.batch_never_ends,
        batch_create_delay=args.batch_create_delay,
        batch_create_timeouts=args.batch_create_timeouts,
        batch_enqueued_token_limit=args.batch_enqueued_token_limit,
        batch_stall_at=args.batch_stall_at,
        batch_cancelling_seconds=args.batch_cancelling_seconds,
    )


async def _serve_until_stopped(server: MockServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
            loop.add_signal_handler(signum, stop.set)
    async with server:
        print(f"Mock OpenAI API at {server.base_url}  (stats: {server.stats_url}; Ctrl-C to stop)", flush=True)
        await stop.wait()


def describe(record: ServedLog) -> str:
    """E.g. "Served 1200 requests: 200 x 1150, 429 x 40, reset x 10"."""
    summary = record.summary()
    parts = ", ".join(f"{status} x {count}" for status, count in summary["by_status"].items())
    return f"Served {summary['total']} requests" + (f": {parts}" if parts else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        server = MockServer(config_from_args(args), host=args.host, port=args.port)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_until_stopped(server))
    except OSError as error:  # the port is taken, the host is not ours...
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    print(describe(server.record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
