"""Run every benchmark with modest defaults and print one line per target: measured, target, pass or MISS.

`make bench` runs this. It takes about 12 minutes on a 2-core machine (pacing ~1 min, overhead ~25 s,
memory ~1.5 min, slow answers ~9 min: its `--quick` run; in full, alone, about 25); `--quick` scales
everything down to about 6 minutes for a smoke run, at the cost of noisier figures (memory at 50k vs 5k
requests rather than 200k vs 20k; pacing cases of 10 s, where the last answer's 0.1-0.3 s latency alone is
2-3% of the latency case's ratio). Figures are printed, never asserted: a MISS is something to look into,
not a failed build. Each benchmark also runs on its own with more flags (see its --help).

Run: .venv/bin/python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable, Sequence

import memory
import overhead
import pacing
import shared_limiter
import slow_answers
import wrong_limits
from _common import Figure

Benchmark = Callable[[Sequence[str]], list[Figure]]
#: About 3 minutes: two latencies, told and learned, and the nginx judge shortened by three (as its e2e test).
SLOW_ANSWERS_QUICK = ["--requests", "100", "--latencies", "1,9", "--modes", "told,learned", "--nginx_requests", "600", "--nginx_latency", "10"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs, about a minute in all")
    args = parser.parse_args(argv)
    plan: list[tuple[str, Benchmark, list[str]]] = [
        ("pacing", pacing.main, ["--seconds", "10"] if args.quick else []),
        ("overhead", overhead.main, ["--requests", "5000", "--rounds", "2"] if args.quick else []),
        ("memory", memory.main, ["--small", "5000", "--large", "50000"] if args.quick else []),
        ("wrong limits", wrong_limits.main, ["--seconds", "20"] if args.quick else []),
        ("shared limiter", shared_limiter.main, ["--acquires", "1000", "--requests", "2000", "--rounds", "1"] if args.quick else []),
        ("slow answers", slow_answers.main, SLOW_ANSWERS_QUICK if args.quick else ["--quick"]),
    ]
    figures: list[Figure] = []
    failed: list[str] = []
    started = time.perf_counter()
    for name, benchmark, benchmark_args in plan:
        print(f"\n=== {name} {' '.join(benchmark_args)}", flush=True)
        try:
            figures.extend(benchmark(benchmark_args))
        except Exception:  # one broken benchmark should not hide the others' figures
            traceback.print_exc()
            failed.append(name)

    print(f"\n=== Summary ({time.perf_counter() - started:.0f} s)")
    for figure in figures:
        print(figure.line())
    for name in failed:
        print(f"{name + ': did not run to the end':<40} ERROR (traceback above)")
    misses = sum(not figure.passed for figure in figures)
    print(f"{len(figures) - misses} of {len(figures)} targets met" + (f"; {len(failed)} benchmark(s) failed" if failed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
