"""The command line: the cookbook script's flags, plus a few more. A thin layer over the jobs.

Exit codes (also in the README):
  0  every request succeeded
  1  the run finished, but some requests failed or some lines were invalid (see the output file)
  2  usage or input error: nothing was sent
  3  stopped early (bad API key, no quota, interrupted, output unwritable): a rerun sends what is left

Every flag may also be spelled with dashes (`--requests-filepath`). The parts: `parser` (the flags, in argument
groups), `checks` (the refusals before anything is sent; the URL, the input and the paths are checked in
`jobs.preflight`), `command` (one invocation, start to exit code), `dispatch` (the job it runs), `exits`.
`--show_limits` is in `jobs.probe`.
"""

from __future__ import annotations

# What cli.py defined, importable from here as before (tests and users import `rate_limited_processor.cli`).
from ..base.errors import (
    UsageError as UsageError,
)
from .checks import (
    _check_batch_mode as _check_batch_mode,
)
from .checks import (
    _check_key as _check_key,
)
from .checks import (
    _check_metrics as _check_metrics,
)
from .checks import (
    _check_redis_extra as _check_redis_extra,
)
from .checks import (
    _parse_header as _parse_header,
)
from .checks import (
    check_budget as check_budget,
)
from .checks import (
    check_files_apart as check_files_apart,
)
from .checks import (
    check_paths as check_paths,
)
from .checks import (
    prices_from_args as prices_from_args,
)
from .checks import (
    settings_from_args as settings_from_args,
)
from .command import (
    _Command as _Command,
)
from .command import (
    _StderrHandler as _StderrHandler,
)
from .command import (
    configure_logging as configure_logging,
)
from .command import (
    main as main,
)
from .dispatch import (
    _report_json as _report_json,
)
from .dispatch import (
    _run as _run,
)
from .dispatch import (
    dry_run as dry_run,
)
from .dispatch import (
    report_settings as report_settings,
)
from .dispatch import (
    serve_metrics as serve_metrics,
)
from .dispatch import (
    shared_limiters as shared_limiters,
)
from .dispatch import (
    write_reports as write_reports,
)
from .exits import (
    EXIT_MEANINGS as EXIT_MEANINGS,
)
from .exits import (
    EXIT_OK as EXIT_OK,
)
from .exits import (
    EXIT_SOME_FAILED as EXIT_SOME_FAILED,
)
from .exits import (
    EXIT_STOPPED as EXIT_STOPPED,
)
from .exits import (
    EXIT_USAGE as EXIT_USAGE,
)
from .exits import (
    PROG as PROG,
)
from .exits import (
    exit_code as exit_code,
)
from .parser import (
    HELP_EPILOG as HELP_EPILOG,
)
from .parser import (
    _HelpFormatter as _HelpFormatter,
)
from .parser import (
    _Parser as _Parser,
)
from .parser import (
    _version as _version,
)
from .parser import (
    build_parser as build_parser,
)
from .values import (
    _batch_lines as _batch_lines,
)
from .values import (
    _fraction as _fraction,
)
from .values import (
    _limit as _limit,
)
from .values import (
    _logging_level as _logging_level,
)
from .values import (
    _non_negative_float as _non_negative_float,
)
from .values import (
    _port as _port,
)
from .values import (
    _positive_float as _positive_float,
)
from .values import (
    _positive_int as _positive_int,
)

__all__ = ["main", "build_parser", "settings_from_args", "exit_code", "EXIT_MEANINGS", "UsageError"]
