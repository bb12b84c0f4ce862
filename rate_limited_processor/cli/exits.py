"""The exit codes, what each means (for --help, the README and --summary_json), and the one a finished run gets."""

from __future__ import annotations

from ..core.stats import RunStats

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


def exit_code(stats: RunStats) -> int:
    if stats.stop_reason is not None:
        return EXIT_STOPPED
    if stats.failed or stats.invalid or stats.failed_earlier:
        return EXIT_SOME_FAILED
    return EXIT_OK
