"""Overhead: what the processor costs per request, against the simplest clients that do the same job.

What it measures. Requests per second of clients against the mock API in its own process, with no limits and
no latency, so that nothing but CPU sets the pace.

`process` (the headline, the figure a skeptic measures): the command as a newcomer runs it
(`python -m rate_limited_processor --requests_filepath F --save_filepath R --request_url U`, its defaults) and
the bare loop below, each a whole process timed by the wall clock from start to exit (interpreter start,
imports, reading the file, writing every row), over the same 20,000 chat requests; also the command told what
the bare loop is told (`--max_in_flight 100`, limits far above the mock's pace), to show where the difference
goes. Then, in this process:

- `bare`: `bare_loop.py`, a bare aiohttp loop that streams the requests file (line by line, `--concurrency`
  workers, default 100), POSTs each body and reads its JSON. It writes nothing.
- `bare+rows`: the same loop, also appending each `[request, response, metadata]` row with the standard
  json module and flushing it, as the cookbook's script does.
- `ours`: the file job, `run_file_job`, as the command runs it: it reads and checks each line of the
  requests file, estimates its tokens, asks the limiter (which never waits here), classifies each answer
  (what a success is, secrets scrubbed), and appends each row and its resume-index record.
- `library`: `Processor(settings).process(requests)` over the same requests in memory, results iterated
  and dropped: how the issue that set the targets measured "the processor" (it writes nothing).

Two workloads: chat (short answers) and embeddings of 1,536 floats each (the mock honours `dimensions`),
where JSON is most of the work. The targets are for ours / bare+rows (>= 0.8 on chat, >= 0.9 on
embeddings) and ours / bare (>= 0.6), from the best run of each; the medians, each round's ratio and the
library's ratios are printed beside them.

How. The mock runs in its own process, so its CPU is not charged to the clients; on a 2-core machine each
side gets a core. Runs alternate (bare, bare+rows, ours, bare, ...) after a warm-up of each, so drift on a
shared machine hits all three alike. Noise only ever slows a run down, so the best runs are the figure;
the medians are beside them, with each client's CPU per request (user + sys of this process, the steadier
figure on a busy machine) and the mock's CPU share (near 100% would mean the mock, not the client, set
the pace, and the ratio flatters the slower side). `--profile` runs cProfile over one file job.

Garbage collection. The processor raises the collector's threshold while it runs (`collector.py`); the
bare loops run with Python's defaults, as a hand-written script does. So the table gives what each client
spent in the collector, and each ratio line also gives the CPU ratio with that time taken out of both:
how the two compare on everything else.

Run: .venv/bin/python benchmarks/overhead.py [--requests 20000] [--embedding_requests 5000]
         [--concurrency 100] [--rounds 5] [--workloads process,chat,embeddings] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import Figure, chat_request, embedding_request, format_table, write_jsonl
from bare_loop import bare_loop

from rate_limited_processor import UNLIMITED, Processor, Settings, run_file_job
from rate_limited_processor.mock_server.child import MockProcess

#: name -> (target ours / bare+rows, target ours / bare)
TARGETS = {"chat": (0.8, 0.6), "embeddings": (0.9, 0.6)}
ENDPOINTS = {"chat": "chat/completions", "embeddings": "embeddings"}
EMBEDDING_DIMENSIONS = 1536
WARM_UP_REQUESTS = 500

#: A client: (url, requests with their metadata, the same as a JSONL file, where rows go, concurrency) -> successes.
Client = Callable[[str, list[dict[str, Any]], Path, Path, int], Coroutine[Any, Any, int]]


async def bare(url: str, requests: list[dict[str, Any]], requests_path: Path, rows_path: Path, concurrency: int, *, rows: bool = False) -> int:
    """The baseline: what any hand-written client does at minimum (`bare_loop.py`, streaming the requests file,
    `concurrency` workers). Returns the 200s it got."""
    return await bare_loop(url, requests_path, rows_path, concurrency, rows=rows)


async def bare_with_rows(url: str, requests: list[dict[str, Any]], requests_path: Path, rows_path: Path, concurrency: int) -> int:
    return await bare(url, requests, requests_path, rows_path, concurrency, rows=True)


async def ours(url: str, requests: list[dict[str, Any]], requests_path: Path, rows_path: Path, concurrency: int) -> int:
    """The product, as the command runs it: the file job, from the requests file to its results file."""
    settings = Settings(request_url=url, api_key=None, limits=UNLIMITED, max_in_flight=concurrency)
    stats = await run_file_job(settings, requests_path, rows_path, show_progress=False)
    return stats.succeeded


async def library(url: str, requests: list[dict[str, Any]], requests_path: Path, rows_path: Path, concurrency: int) -> int:
    """The processor as a library, as the issue measured it: requests from memory, results iterated, nothing written."""
    settings = Settings(request_url=url, api_key=None, limits=UNLIMITED, max_in_flight=concurrency)
    succeeded = 0
    async for result in Processor(settings).process(requests):
        succeeded += result.succeeded
    return succeeded


CLIENTS: dict[str, Client] = {"bare": bare, "bare+rows": bare_with_rows, "ours": ours, "library": library}


@dataclass(frozen=True, slots=True)
class Run:
    client: str
    seconds: float
    #: This process's user + sys CPU during the run.
    cpu_seconds: float
    #: The mock process's CPU during the run: near `seconds` means the mock, not the client, set the pace.
    mock_cpu_seconds: float
    #: Of `cpu_seconds`, what CPython's cyclic garbage collector took (the processor raises its threshold for a run).
    gc_seconds: float
    requests: int

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.cpu_seconds / self.requests

    @property
    def mock_busy(self) -> float:
        return self.mock_cpu_seconds / self.seconds

    @property
    def gc_us_per_request(self) -> float:
        return 1e6 * self.gc_seconds / self.requests


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _CollectorTime:
    """Seconds spent in the garbage collector, from its start and stop callbacks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


def timed_run(name: str, mock: MockProcess, url: str, requests: list[dict[str, Any]], workdir: Path, concurrency: int) -> Run:
    requests_path = write_jsonl(workdir / "requests.jsonl", requests)
    rows_path = workdir / "results.jsonl"
    for stale in workdir.glob("results.jsonl*"):  # each run starts with no results (and no resume index)
        stale.unlink()
    collector = _CollectorTime()
    gc.callbacks.append(collector)
    try:
        cpu, mock_cpu, started = _cpu(), mock.cpu_seconds(), time.perf_counter()
        ok = asyncio.run(CLIENTS[name](url, requests, requests_path, rows_path, concurrency))
        seconds, cpu, mock_cpu = time.perf_counter() - started, _cpu() - cpu, mock.cpu_seconds() - mock_cpu
    finally:
        gc.callbacks.remove(collector)
    if ok != len(requests):
        raise RuntimeError(f"{name}: only {ok} of {len(requests)} requests succeeded")
    return Run(name, seconds, cpu, mock_cpu, collector.seconds, len(requests))


def workload(name: str, count: int) -> list[dict[str, Any]]:
    if name == "chat":
        return [chat_request(i) for i in range(count)]
    return [{**embedding_request(i), "dimensions": EMBEDDING_DIMENSIONS} for i in range(count)]


def measure(name: str, mock: MockProcess, requests: list[dict[str, Any]], workdir: Path, rounds: int, concurrency: int) -> list[Figure]:
    url = mock.url(ENDPOINTS[name])
    for client in CLIENTS:  # warm-up: tokenizer, imports, the mock's first connections
        timed_run(client, mock, url, requests[:WARM_UP_REQUESTS], workdir, concurrency)
    runs: list[Run] = []
    for _ in range(rounds):
        for client in CLIENTS:
            run = timed_run(client, mock, url, requests, workdir, concurrency)
            print(f"  {name} {client}: {run.per_second:,.0f} req/s, {run.cpu_us_per_request:.0f} us CPU/request "
                  f"({run.gc_us_per_request:.1f} in GC), mock busy {run.mock_busy:.0%}",
                  file=sys.stderr, flush=True)
            runs.append(run)
    best = {client: max((r for r in runs if r.client == client), key=lambda r: r.per_second) for client in CLIENTS}
    median = {client: statistics.median(r.per_second for r in runs if r.client == client) for client in CLIENTS}
    cpu = {client: min(r.cpu_us_per_request for r in runs if r.client == client) for client in CLIENTS}
    cpu_besides_gc = {client: min(r.cpu_us_per_request - r.gc_us_per_request for r in runs if r.client == client) for client in CLIENTS}
    collecting = {client: statistics.median(r.gc_us_per_request for r in runs if r.client == client) for client in CLIENTS}
    print(f"\nOverhead, {name}: {len(requests):,} requests per run, concurrency {concurrency}, mock in its own process, "
          f"{rounds} alternating runs of each")
    print(format_table(
        ["client", "best req/s", "median req/s", "least CPU us/req", "of which GC (median)", "mock busy (best run)"],
        [[client, f"{best[client].per_second:,.0f}", f"{median[client]:,.0f}", f"{cpu[client]:.0f}", f"{collecting[client]:.1f}",
          f"{best[client].mock_busy:.0%}"]
         for client in CLIENTS],
    ))
    with_rows, without = TARGETS[name]
    figures = []
    for client in ("ours", "library"):
        for baseline, target in (("bare+rows", with_rows), ("bare", without)):
            ratio = best[client].per_second / best[baseline].per_second
            print(f"{client} / {baseline}: best {ratio:.2f} (target >= {target}), median {median[client] / median[baseline]:.2f}, "
                  f"rounds {_round_range(runs, client, baseline)}; CPU per request {cpu[client] / cpu[baseline]:.2f}x, "
                  f"besides GC {cpu_besides_gc[client] / cpu_besides_gc[baseline]:.2f}x")
            if client == "ours":
                figures.append(Figure(f"overhead {name}: ours / {baseline} req/s", ratio, ">=", target))
    return figures


#: The figure a skeptic measures: the command as a newcomer runs it (its defaults) and the streaming bare loop, each
#: a whole process (interpreter start, imports, reading the file, writing the rows), timed by the wall clock around it.
#: Also the command told what the bare loop is told (its concurrency, limits above the mock's pace), for where the
#: difference goes. No target was set for it; 0.5 marks "half the bare loop's pace".
PROCESS_TARGET = 0.5
BARE_LOOP = Path(__file__).resolve().parent / "bare_loop.py"


def process_command(client: str, url: str, requests_path: Path, rows_path: Path, concurrency: int) -> list[str]:
    if client == "bare+rows":
        return [sys.executable, str(BARE_LOOP), str(requests_path), url, str(rows_path), "--concurrency", str(concurrency)]
    command = [sys.executable, "-m", "rate_limited_processor", "--requests_filepath", str(requests_path), "--save_filepath", str(rows_path),
               "--request_url", url]
    if client == "command":  # as a newcomer runs it: the defaults (limits learned, 1,000 in flight)
        return command
    # Told what the bare loop is told: the concurrency, and limits far above what a loopback mock can take.
    return [*command, "--max_in_flight", str(concurrency), "--max_requests_per_minute", "1e9", "--max_tokens_per_minute", "1e12"]


def measure_processes(mock: MockProcess, requests: list[dict[str, Any]], workdir: Path, rounds: int, concurrency: int) -> list[Figure]:
    """The command / the streaming bare loop, both as whole processes, alternating rounds: requests per second."""
    url = mock.url(ENDPOINTS["chat"])
    requests_path = write_jsonl(workdir / "requests.jsonl", requests)
    seconds: dict[str, list[float]] = {"bare+rows": [], "command": [], "command, told": []}
    cpu: dict[str, list[float]] = {client: [] for client in seconds}  # user + sys of the process (the steadier figure on a busy machine)
    for _ in range(rounds):
        for client in seconds:
            rows_path = workdir / "results.jsonl"
            for stale in workdir.glob("results.jsonl*"):
                stale.unlink()
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            mock_cpu = mock.cpu_seconds()
            started = time.perf_counter()
            subprocess.run(process_command(client, url, requests_path, rows_path, concurrency), check=True, capture_output=True)
            took = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[client].append(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
            mock_busy = (mock.cpu_seconds() - mock_cpu) / took  # near 100%: the mock set the pace, and the ratio flatters the slower side
            with open(rows_path, "rb") as rows:
                written = sum(1 for _ in rows)
            if written != len(requests):
                raise RuntimeError(f"{client}: wrote {written} rows of {len(requests)}")
            seconds[client].append(took)
            print(f"  process {client}: {len(requests) / took:,.0f} req/s ({took:.2f} s, {cpu[client][-1]:.2f} s CPU), mock busy {mock_busy:.0%}",
                  file=sys.stderr, flush=True)
    best = {client: min(times) for client, times in seconds.items()}
    median = {client: statistics.median(times) for client, times in seconds.items()}
    print(f"\nOverhead, whole processes: {len(requests):,} chat requests, the bare loop at concurrency {concurrency}, zero-latency mock in "
          f"its own process, {rounds} alternating runs of each, each timed by the wall clock from start to exit")
    print(format_table(
        ["client", "best req/s", "median req/s", "least CPU us/req"],
        [[client, f"{len(requests) / best[client]:,.0f}", f"{len(requests) / median[client]:,.0f}", f"{1e6 * min(cpu[client]) / len(requests):.0f}"]
         for client in seconds],
    ))
    for client, how in (("command", "its defaults"), ("command, told", f"--max_in_flight {concurrency} and limits given")):
        rounds_ratios = [bare_s / ours_s for bare_s, ours_s in zip(seconds["bare+rows"], seconds[client], strict=True)]
        print(f"{client} ({how}) / streaming bare loop: best {best['bare+rows'] / best[client]:.2f}, "
              f"median {median['bare+rows'] / median[client]:.2f}, rounds {min(rounds_ratios):.2f}-{max(rounds_ratios):.2f}; "
              f"CPU per request {min(cpu[client]) / min(cpu['bare+rows']):.2f}x")
    return [Figure("overhead chat, whole processes: command / bare", best["bare+rows"] / best["command"], ">=", PROCESS_TARGET)]


def _round_range(runs: list[Run], client: str, baseline: str) -> str:
    """The ratio in each round (the client against the baseline's run of that round): how much the machine moved."""
    ratios = [mine.per_second / theirs.per_second
              for theirs, mine in zip([r for r in runs if r.client == baseline], [r for r in runs if r.client == client], strict=True)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def profile_once(mock: MockProcess, requests: list[dict[str, Any]], workdir: Path, concurrency: int, top: int = 30) -> str:
    """cProfile over one file job: the functions with the most time of their own."""
    profiler = cProfile.Profile()
    profiler.enable()
    timed_run("ours", mock, mock.url(ENDPOINTS["chat"]), requests, workdir, concurrency)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="chat requests per timed run (default: 20000)")
    parser.add_argument("--embedding_requests", type=int, default=5_000, help="embedding requests per timed run (default: 5000)")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight, every client (default: 100)")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each client, alternating (default: 5)")
    parser.add_argument(
        "--workloads", default="process,chat,embeddings",
        help="comma-separated: process (the command and the bare loop as whole processes, on chat), chat, embeddings (default: all)",
    )
    parser.add_argument(
        "--process_model", default="gpt-4o-mini",
        help="the chat model of the whole-process runs (default: gpt-4o-mini, as a newcomer's file; its encoding, o200k_base, is "
        "loaded or fallen back from as the command does)",
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile one file job on chat and print hot spots")
    args = parser.parse_args(argv)

    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="rlp-overhead-") as tmp, MockProcess() as mock:
        for name in args.workloads.split(","):
            if name == "process":
                chat = [{**request, "model": args.process_model} for request in workload("chat", args.requests)]
                figures.extend(measure_processes(mock, chat, Path(tmp), args.rounds, args.concurrency))
                continue
            count = args.requests if name == "chat" else args.embedding_requests
            figures.extend(measure(name, mock, workload(name, count), Path(tmp), args.rounds, args.concurrency))
        if args.profile:
            print("\ncProfile of one file job, chat (top by own time; a coroutine counts a call per resumption):")
            print(profile_once(mock, workload("chat", args.requests), Path(tmp), args.concurrency))
    return figures


if __name__ == "__main__":
    main()
