"""The command: the checks (`checks`), then the run, the dry run or --show_limits (`dispatch`), then the exit code;
every way out, a refusal included, writes --summary_json when asked."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..base.atomic_write import write_json_atomically
from ..base.errors import LimiterUnavailable, UsageError
from ..config.credentials import scrubber_for
from ..config.settings import Settings
from ..core.costs import PriceBook
from ..core.limiter import Limits
from ..core.stats import RunStats
from ..jobs.file_job import default_save_path
from ..jobs.preflight import check_input, check_readable, check_writable, first_model
from ..jobs.probe import format_limits, probe_body, probe_limits
from ..providers.endpoints import endpoint_from_url
from ..transport.http import AiohttpTransport
from ..ui.summary import format_summary, summary_record
from ..ui.terminal import hangup_proof_stderr
from .checks import (
    _check_batch_mode,
    _check_key,
    _check_metrics,
    _check_redis_extra,
    auto_prices_from_args,
    check_budget,
    check_deadline,
    check_files_apart,
    check_paths,
    prices_from_args,
    settings_from_args,
)
from .dispatch import _run, dry_run
from .exits import EXIT_MEANINGS, EXIT_OK, EXIT_STOPPED, EXIT_USAGE, PROG, exit_code
from .parser import build_parser


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
            check_files_apart(args, self.requests_path, self.save_path, self.summary_path)
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
            check_paths(args, self.requests_path, self.save_path)
            check_input(self.requests_path, settings.request_url, url_given=args.request_url is not None)
            check_deadline(args)
            if args.mode != "online":
                _check_batch_mode(args, settings.request_url)
            if not args.dry_run:
                _check_key(settings)
                _check_redis_extra(args.redis_url)
                _check_metrics(args)
                check_budget(args, prices, self.requests_path)
        except UsageError as error:
            return self.refuse(error)
        configure_logging(args.logging_level)
        if args.dry_run:
            return dry_run(
                settings, self.requests_path, self.save_path, retry_failed=args.retry_failed, prices=prices, parquet=args.output_format == "parquet",
                deadline=args.deadline, batch=args.mode == "batch",
                both_prices=auto_prices_from_args(args, settings.request_url) if args.mode == "auto" else None,
            )
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
