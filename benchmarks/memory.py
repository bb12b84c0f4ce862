"""Memory: does a 10x longer file cost more memory? It should not: input is read lazily, results are
written as they arrive, and at most `max_in_flight` requests are held at once.

What it measures. Peak RSS of the file job processing 1,000,000 requests vs 100,000, each in a fresh
process running the command line exactly as a user would:

    python -m rate_limited_processor --requests_filepath IN --save_filepath OUT --request_url MOCK
        --max_requests_per_minute 1e9 --max_tokens_per_minute 1e12 --no_progress

against the mock API in a separate process (the mock keeps one small record entry per request, so its
memory grows; it is not measured).

How peak RSS is read: by `ru_maxrss` from `os.wait4` on the job's process (the kernel's high-water
mark of its resident set, in KiB on Linux), but with a small, fresh interpreter as the job's parent rather
than this process. That detour matters: at exec, Linux folds the high-water mark of the address space
being replaced (the forked or vforked parent's) into the new process's `ru_maxrss`, so a job started
directly from here reports at least this process's own peak. Under `run_all`, after the other benchmarks,
that is ~117 MB, more than the job itself uses, and both runs read the same. (`RUSAGE_CHILDREN` has that
flaw and another: it is the largest of all children waited for so far.) The spawner's own ~12 MB is the
floor of the figure, far below any job's.

Targets: the large run's peak at most 150 MB, and at most 10 MB above the small run's.

Run: .venv/bin/python benchmarks/memory.py [--small 100000] [--large 1000000]   (about 10 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import Figure, chat_request, format_table, write_jsonl

from rate_limited_processor.mock_server.child import MockProcess

TARGET_GROWTH_MB = 10.0
TARGET_PEAK_MB = 150.0
#: Limits so high that the limiter never waits: this measures memory, not pacing.
HUGE_RPM = "1e9"
HUGE_TPM = "1e12"


@dataclass(frozen=True, slots=True)
class JobRun:
    requests: int
    peak_rss_mb: float
    seconds: float
    exit_code: int
    rows_written: int


#: Run the command in argv, wait for it, print "<peak RSS KiB> <exit code>". Run as `python -c` so the
#: job's parent is a ~12 MB interpreter (see the module docstring for why that matters).
_SPAWN_AND_REPORT_PEAK = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def run_job(requests: int, workdir: Path, request_url: str) -> JobRun:
    """Write a requests file, run the command line on it in a fresh process, and read its peak RSS."""
    input_path = write_jsonl(workdir / f"requests_{requests}.jsonl", (chat_request(i) for i in range(requests)))
    output_path = workdir / f"results_{requests}.jsonl"  # must not exist: an existing one would be resumed
    command = [
        sys.executable, "-m", "rate_limited_processor",
        "--requests_filepath", str(input_path), "--save_filepath", str(output_path),
        "--request_url", request_url,
        "--max_requests_per_minute", HUGE_RPM, "--max_tokens_per_minute", HUGE_TPM,
        "--no_progress",
    ]
    with open(workdir / f"stderr_{requests}.txt", "w") as stderr:
        started = time.perf_counter()
        spawner = subprocess.run([sys.executable, "-c", _SPAWN_AND_REPORT_PEAK, *command], stdout=subprocess.PIPE, stderr=stderr, text=True, check=True)
        seconds = time.perf_counter() - started
    peak_kib, exit_code = map(int, spawner.stdout.split())
    with open(output_path, "rb") as output:
        rows = sum(1 for _ in output)
    input_path.unlink()
    output_path.unlink()
    return JobRun(requests, peak_kib / 1024, seconds, exit_code, rows)


def figures(small: JobRun, large: JobRun) -> list[Figure]:
    growth = large.peak_rss_mb - small.peak_rss_mb
    return [
        Figure(f"memory: peak RSS at {large.requests // 1000}k requests", large.peak_rss_mb, "<=", TARGET_PEAK_MB, " MB"),
        Figure(f"memory: peak RSS {large.requests // 1000}k - {small.requests // 1000}k requests", growth, "<=", TARGET_GROWTH_MB, " MB"),
    ]


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100_000, help="requests in the small run (default: 100000)")
    parser.add_argument("--large", type=int, default=1_000_000, help="requests in the large run (default: 1000000)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rlp-memory-") as tmp, MockProcess() as mock:
        url = mock.url("chat/completions")
        runs = []
        for requests in (args.small, args.large):
            run = run_job(requests, Path(tmp), url)
            print(f"  {requests:,} requests: peak RSS {run.peak_rss_mb:.1f} MB in {run.seconds:.1f} s", file=sys.stderr, flush=True)
            if run.exit_code != 0 or run.rows_written != requests:
                log = (Path(tmp) / f"stderr_{requests}.txt").read_text()
                print(f"  the job exited {run.exit_code} with {run.rows_written:,} rows; its stderr:\n{log}", file=sys.stderr, flush=True)
            runs.append(run)
    small, large = runs
    print(f"\nMemory: peak RSS of the command-line file job in a fresh process (targets: at most {TARGET_PEAK_MB:g} MB, "
          f"within {TARGET_GROWTH_MB:g} MB of the small run)")
    print(format_table(
        ["requests", "peak RSS MB", "seconds", "req/s", "exit", "rows"],
        [[f"{r.requests:,}", f"{r.peak_rss_mb:.1f}", f"{r.seconds:.1f}", f"{r.requests / r.seconds:,.0f}", r.exit_code, f"{r.rows_written:,}"]
         for r in runs],
    ))
    print(f"growth {large.peak_rss_mb - small.peak_rss_mb:+.1f} MB for {large.requests / small.requests:.0f}x the requests")
    return figures(small, large)


if __name__ == "__main__":
    main()
