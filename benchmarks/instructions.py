"""Instructions per request: the overhead benchmark's chat ratio without the machine's noise.

Why. On a shared machine the same client's CPU per request swings by a third from one round of
`overhead.py` to the next, so a change worth a few percent cannot be told from noise. The number of
instructions a client executes per request hardly moves from run to run: this counts them.

How. Each client runs under valgrind's callgrind (the client's process only: the mock runs in a process of
its own, which is not counted), once over N chat requests and once over 5N; the difference, divided by 4N,
leaves out start-up and imports. Under valgrind the client runs some 50 times slower, so the mock never
sets the pace. Clients are counted two at a time, one per core.

What it does not count: the kernel's side of the sockets and the file, and cache misses. So it is not time,
but what we change (Python calls per request) is what it counts; the ratio bare+rows / ours is the CPU
ratio of `overhead.py` without the noise.

Run: .venv/bin/python benchmarks/instructions.py [--requests 500] [--clients bare+rows,ours,library]
     (about 3 minutes on 2 cores; needs valgrind: apt-get install valgrind)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import overhead
from _common import Figure

from rate_limited_processor.mock_server.child import MockProcess

TARGET = overhead.TARGETS["chat"][0]
_COLLECTED = re.compile(rb"Collected : (\d+)")


def child(client: str, count: int) -> None:
    """One run of `client` over `count` chat requests, against a mock in its own process (what valgrind counts)."""
    requests = overhead.workload("chat", count)
    with tempfile.TemporaryDirectory(prefix="rlp-instructions-") as tmp, MockProcess() as mock:
        overhead.timed_run(client, mock, mock.url(overhead.ENDPOINTS["chat"]), requests, Path(tmp), 100)


def counted(client: str, count: int) -> subprocess.Popen[bytes]:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__, "--child", client, str(count)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def instructions(process: subprocess.Popen[bytes]) -> int:
    _, stderr = process.communicate()
    match = _COLLECTED.search(stderr)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"valgrind run failed (exit {process.returncode}):\n{stderr.decode(errors='replace')[-2000:]}")
    return int(match[1])


def per_request(clients: list[str], small: int) -> dict[str, float]:
    """Instructions per request of each client: (runs of 5N) - (runs of N), over 4N."""
    large = 5 * small
    jobs = [(client, count) for client in clients for count in (small, large)]
    totals: dict[tuple[str, int], int] = {}
    for start in range(0, len(jobs), 2):  # two at a time: one per core
        batch = jobs[start : start + 2]
        running = [(job, counted(*job)) for job in batch]
        for job, process in running:
            totals[job] = instructions(process)
    return {client: (totals[client, large] - totals[client, small]) / (large - small) for client in clients}


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="N: chat requests in the smaller run, 5N in the larger (default: 500)")
    parser.add_argument("--clients", default="bare+rows,ours,library", help="comma-separated, from overhead.py (default: bare+rows,ours,library)")
    parser.add_argument("--child", nargs=2, metavar=("CLIENT", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return []
    if shutil.which("valgrind") is None:
        sys.exit("instructions.py needs valgrind (apt-get install valgrind)")
    clients = args.clients.split(",")
    if "bare+rows" not in clients:
        clients.insert(0, "bare+rows")
    counts = per_request(clients, args.requests)
    print(f"\nInstructions per chat request (callgrind, client process only; runs of {args.requests} and {5 * args.requests} requests)")
    for client, count in counts.items():
        print(f"  {client:10s} {count / 1e3:8.1f} k")
    figures = []
    for client in clients:
        if client != "bare+rows":
            ratio = counts["bare+rows"] / counts[client]
            print(f"bare+rows / {client}: {ratio:.3f} (the CPU ratio without noise; overhead target >= {TARGET})")
            if client == "ours":
                figures.append(Figure("instructions chat: bare+rows / ours", ratio, ">=", TARGET))
    return figures


if __name__ == "__main__":
    main()
