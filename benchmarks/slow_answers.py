"""Slow answers at full speed (issue 23): does a run hold the limit when answers take seconds, not milliseconds?

At a rate R and a latency L a run needs R x L requests in flight (Little's law): 300 at 600 RPM and 30 s.
Everything here is a true 600 RPM, real HTTP over loopback, the file job as the command runs it
(`--max_attempts 2`, so a 429 must cost no attempt; the default `--request_timeout` and `--max_in_flight`,
1,000, which holds 30 s at 600 RPM with room to spare: the "cap waits" column shows whether it ever bound).

1. The latency axis. N chat requests to the project's mock with its one-second bucket at 600 RPM and its
   x-ratelimit headers on, answers taking L/2 to 3L/2 (uniform; `--sigma` for a lognormal around L), for
   L = 0.1, 1, 9 and 30 s, in three modes:

     told      the tool told the true 600 RPM
     learned   the tool told nothing: it learns the limit from the headers
     plain     a bare aiohttp loop that sends at exactly 10 requests a second, told the truth, and sends a
               429's request again in a later slot (a plain paced client, like oaib): the reference

2. The nginx judge. `--nginx_requests` (1,800) chat requests behind nginx `limit_req` (10 r/s, burst 5, as in
   `wrong_limits.py`), answers of 15-45 s from the mock behind it, the tool told 3x too much (1,800 RPM):
   nginx answers over-limit requests with an HTML 429 and nothing else (no headers, no hint). The plain paced
   client runs the same case, told the truth.

Figures, per case:

    time / ideal   wall time to the last result / (N / 10 per second), the latency-free ideal
    / reachable    wall time / (ideal + the slowest answer the mock gave): a client pacing perfectly at the
                   limit sends its last request at the ideal and has every answer back by then
    vs plain       our wall time / the plain paced client's, same latency
    429s %         rate-limit 429s per request (the client's count: the mock's own, or nginx's)
    found          the limit the summary reports found ("next time: --max_requests_per_minute X"), or "-"

Targets (from issue 23): nginx told 3x <= 1.30 x the ideal at the judge's own size (1,800 requests, 15-45 s)
and, at any size, <= 1.05 of the reachable time; told <= 1.05 and learned <= 1.10 of the reachable time (the
issue's 1.15 and 1.20 at 1,200 requests, where the best possible is 1.08, put on a footing that holds at any
N and latency); told <= 1% 429s; no failure rows. About 55 minutes here with the defaults (600 requests, an ideal
of 60 s a case); `--quick` runs 150 requests a case and the nginx judge shortened by three as the e2e test
runs it (600 requests, answers of 5-15 s), about 9 minutes.

Run: .venv/bin/python benchmarks/slow_answers.py [--quick] [--requests 600] [--latencies 0.1,1,9,30]
         [--modes told,learned,plain] [--nginx_requests 1800] [--nginx_latency 30] [--skip_axis] [--skip_nginx]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from _common import CHAT_MODEL, Figure, chat_request, format_table, without_metadata, write_jsonl

from rate_limited_processor import Limits, RetryPolicy, Settings, run_file_job
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.mock_server.nginx import nginx_binary, nginx_gateway
from rate_limited_processor.ui.summary import format_summary

TRUE_RPM = 600
PER_SECOND = TRUE_RPM // 60
NGINX_BURST = 5
#: Told 3x too much behind nginx.
NGINX_TOLD = 3
MODES = ("told", "learned", "plain")
MOST_REACHABLE = {"told": 1.05, "learned": 1.10}
#: The nginx judge's size, where its bar on time / ideal applies; at any size, `MOST_NGINX_REACHABLE`.
NGINX_JUDGE = (1_800, 30.0)
MOST_NGINX = 1.30
MOST_NGINX_REACHABLE = 1.05
MOST_429_PERCENT_TOLD = 1.0


@dataclass(frozen=True, slots=True)
class Run:
    case: str
    #: The answers' middle latency, seconds.
    latency: float
    mode: str
    requests: int
    elapsed: float
    #: The slowest answer the mock gave (seconds from its arrival to its answer).
    slowest: float
    rate_limited: int
    failure_rows: int = 0
    found_rpm: float | None = None
    cap_waits: int = 0
    needed_in_flight: float | None = None
    #: The summary's "rate control" and "in flight" lines, and nginx's complaints, if any.
    notes: tuple[str, ...] = ()

    @property
    def ideal(self) -> float:
        return self.requests / PER_SECOND

    @property
    def ratio(self) -> float:
        return self.elapsed / self.ideal

    @property
    def reachable_ratio(self) -> float:
        return self.elapsed / (self.ideal + self.slowest)

    @property
    def percent_429(self) -> float:
        return 100 * self.rate_limited / self.requests


def mock_config(latency: float, sigma: float, *, limited: bool) -> MockConfig:
    """Answers of latency/2 to 3 latency/2 (or lognormal around it); the mock's own 600 RPM bucket when `limited`."""
    spread: dict[str, Any] = {"latency": latency, "latency_sigma": sigma} if sigma > 0 else {"latency": latency / 2, "latency_jitter": latency}
    return MockConfig(requests_per_minute=TRUE_RPM if limited else None, model=CHAT_MODEL, **spread)


def slowest_answer(server: MockServer) -> float:
    return max((entry.finished_at - entry.arrived_at for entry in server.record if entry.outcome == 200 and entry.finished_at is not None), default=0.0)


async def ours(url: str, limits: Limits, requests: int, work: Path) -> tuple[float, Any, int]:
    """The file job as the command runs it: wall time, its stats, and its failure rows."""
    input_path = write_jsonl(work / "requests.jsonl", (chat_request(i) for i in range(requests)))
    output_path = work / "results.jsonl"
    output_path.unlink(missing_ok=True)
    settings = Settings(request_url=url, api_key=None, limits=limits, retry=RetryPolicy(max_attempts=2))
    started = time.monotonic()
    stats = await run_file_job(settings, input_path, output_path, show_progress=False)
    elapsed = time.monotonic() - started
    rows = [json.loads(line) for line in output_path.read_text().splitlines()]
    failures = sum(isinstance(row[1], list) or "error" in row[1] for row in rows) + (requests - len(rows))
    return elapsed, stats, failures


async def plain_paced(url: str, requests: int, per_second: float) -> tuple[float, int, int]:
    """A plain client: one request every 1/per_second seconds, no cap on what is in flight, a 429's (or a
    failed) request queued again for a later slot. Wall time to the last 200, its 429s, other failures."""
    bodies = [json.dumps(without_metadata(chat_request(i))).encode() for i in range(requests)]
    queue = deque(range(requests))
    wake = asyncio.Event()
    done = asyncio.Event()
    left = requests
    rate_limited = failed = 0
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(i: int) -> None:
            nonlocal left, rate_limited, failed
            try:
                async with session.post(url, data=bodies[i], headers={"content-type": "application/json"}) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            if status == 200:
                left -= 1
                if not left:
                    done.set()
                return
            if status == 429:
                rate_limited += 1
            else:
                failed += 1
            queue.append(i)
            wake.set()

        started = loop.time()
        next_at = started
        while left:
            if not queue:
                wake.clear()
                waiting = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(done.wait())}
                _, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for future in pending:
                    future.cancel()
                continue
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(post(queue.popleft()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at = max(next_at + 1 / per_second, loop.time())  # a slot nobody used is not saved up
        elapsed = loop.time() - started
    return elapsed, rate_limited, failed


def our_run(case: str, latency: float, mode: str, requests: int, elapsed: float, slowest: float, stats: Any, failures: int) -> Run:
    control = stats.control
    found = control.found_requests_per_minute if control is not None and control.cuts else None
    notes = tuple(line.strip() for line in format_summary(stats).splitlines() if line.strip().startswith(("rate control", "in flight")))
    return Run(
        case, latency, mode, requests, elapsed, slowest, stats.rate_limit_errors, failures, found,
        stats.in_flight_cap_waits, stats.needed_in_flight, notes,
    )


async def axis_case(latency: float, mode: str, requests: int, sigma: float, work: Path) -> Run:
    async with MockServer(mock_config(latency, sigma, limited=True)) as server:
        url = server.url("chat/completions")
        if mode == "plain":
            elapsed, rate_limited, failed = await plain_paced(url, requests, PER_SECOND)
            return Run("mock", latency, mode, requests, elapsed, slowest_answer(server), rate_limited, failed)
        limits = Limits(TRUE_RPM, math.inf) if mode == "told" else Limits(None, None)
        elapsed, stats, failures = await ours(url, limits, requests, work)
        return our_run("mock", latency, mode, requests, elapsed, slowest_answer(server), stats, failures)


async def nginx_case(latency: float, mode: str, requests: int, sigma: float, work: Path) -> Run:
    async with MockServer(mock_config(latency, sigma, limited=False)) as upstream:
        with nginx_gateway(f"127.0.0.1:{upstream.port}", work / "nginx", rate=PER_SECOND, burst=NGINX_BURST) as origin:
            url = f"{origin}/v1/chat/completions"
            if mode == "plain":
                elapsed, rate_limited, failed = await plain_paced(url, requests, PER_SECOND)
                run = Run("nginx", latency, mode, requests, elapsed, slowest_answer(upstream), rate_limited, failed)
            else:
                elapsed, stats, failures = await ours(url, Limits(NGINX_TOLD * TRUE_RPM, math.inf), requests, work)
                run = our_run("nginx", latency, f"told {NGINX_TOLD}x", requests, elapsed, slowest_answer(upstream), stats, failures)
    log = work / "nginx" / "error.log"
    lines = log.read_text().splitlines() if log.exists() else []
    complaints = [line for line in lines if ("[alert]" in line or "[error]" in line) and "limiting requests" not in line]  # a 429 logs one
    if complaints:  # e.g. "worker_connections are not enough": the gateway, not the client, failed requests
        run = dataclasses.replace(run, notes=(*run.notes, f"nginx: {len(complaints)} alerts/errors, first: {complaints[0]}"))
    return run


def progress(run: Run) -> None:
    found = f", found {run.found_rpm:,.0f} RPM" if run.found_rpm else ""
    print(
        f"  {run.case} L={run.latency:g}s {run.mode}: {run.elapsed:.1f} s, {run.ratio:.3f}x ideal, {run.reachable_ratio:.3f}x reachable, "
        f"{run.percent_429:.1f}% 429s, {run.failure_rows} failures{found}",
        flush=True,
    )
    for note in run.notes:
        print(f"      {note}", flush=True)


def table(runs: Sequence[Run]) -> str:
    plain = {(run.case, run.latency): run.elapsed for run in runs if run.mode == "plain"}
    header = ["case", "latency s", "mode", "N", "ideal s", "took s", "time / ideal", "/ reachable", "vs plain", "429s %", "failures", "found RPM"]
    header += ["cap waits", "needed in flight"]
    rows = []
    for run in runs:
        versus = plain.get((run.case, run.latency))
        rows.append([
            run.case, f"{run.latency:g}", run.mode, run.requests, f"{run.ideal:.0f}", f"{run.elapsed:.1f}", f"{run.ratio:.3f}",
            f"{run.reachable_ratio:.3f}", "-" if versus is None or run.mode == "plain" else f"{run.elapsed / versus:.3f}",
            f"{run.percent_429:.1f}", run.failure_rows, f"{run.found_rpm:,.0f}" if run.found_rpm else "-",
            "-" if run.mode == "plain" else run.cap_waits,
            "-" if run.needed_in_flight is None or not math.isfinite(run.needed_in_flight) else f"{run.needed_in_flight:.0f}",
        ])
    return format_table(header, rows)


def figures(runs: Sequence[Run]) -> list[Figure]:
    result = []
    for run in runs:
        if run.mode == "plain":
            continue
        name = f"slow {run.case} {run.latency:g}s {run.mode}"
        if run.case == "nginx":
            if (run.requests, run.latency) == NGINX_JUDGE:
                result.append(Figure(f"{name}: time / ideal", run.ratio, "<=", MOST_NGINX))
            result.append(Figure(f"{name}: time / reachable", run.reachable_ratio, "<=", MOST_NGINX_REACHABLE))
        else:
            result.append(Figure(f"{name}: time / reachable", run.reachable_ratio, "<=", MOST_REACHABLE[run.mode]))
            if run.mode == "told":
                result.append(Figure(f"{name}: 429s", run.percent_429, "<=", MOST_429_PERCENT_TOLD, "%"))
        result.append(Figure(f"{name}: failure rows", run.failure_rows, "<=", 0))
    return result


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="150 requests a case; nginx at 600 requests and answers of 5-15 s")
    parser.add_argument("--requests", type=int, help="requests per latency-axis case (default 600, --quick 150)")
    parser.add_argument("--latencies", default="0.1,1,9,30", help="middle answer times in seconds, comma-separated (default 0.1,1,9,30)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--sigma", type=float, default=0.0, help="lognormal latencies of this sigma around each latency (default 0: uniform L/2-3L/2)")
    parser.add_argument("--nginx_requests", type=int, help="requests in the nginx judge (default 1800, --quick 600)")
    parser.add_argument("--nginx_latency", type=float, help="its middle answer time (default 30: 15-45 s; --quick 10: 5-15 s)")
    parser.add_argument("--skip_axis", action="store_true", help="run the nginx judge only")
    parser.add_argument("--skip_nginx", action="store_true", help="run the latency axis only")
    args = parser.parse_args(argv)
    logging.getLogger("rate_limited_processor").setLevel(logging.ERROR)
    requests = args.requests or (150 if args.quick else 600)
    nginx_requests = args.nginx_requests or (600 if args.quick else 1_800)
    nginx_latency = args.nginx_latency or (10.0 if args.quick else 30.0)
    modes = [mode.strip() for mode in args.modes.split(",")]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="rlp_slow_answers_") as tmp:
        cases: list[tuple[str, float, str, int]] = []
        if not args.skip_axis:
            cases += [("mock", float(latency), mode, requests) for latency in args.latencies.split(",") for mode in modes]
        if not args.skip_nginx:
            if nginx_binary() is None:
                print("  nginx judge: skipped (no nginx binary; Debian: apt-get install nginx)", flush=True)
            else:
                cases += [("nginx", nginx_latency, mode, nginx_requests) for mode in ("told", "plain") if mode in modes or mode == "told"]
        for number, (case, latency, mode, n) in enumerate(cases):
            work = Path(tmp) / str(number)
            work.mkdir()
            run_case = nginx_case if case == "nginx" else axis_case
            run = asyncio.run(run_case(latency, mode, n, args.sigma, work))
            progress(run)
            runs.append(run)
    print(f"\nSlow answers: a true {TRUE_RPM} RPM; latency-free ideal = N / {PER_SECOND} per second; reachable = ideal + the slowest answer")
    print(f"(nginx: limit_req {PER_SECOND} r/s burst {NGINX_BURST}, told {NGINX_TOLD}x, no hints; plain = a bare paced client told the truth)")
    print(table(runs))
    return figures(runs)


if __name__ == "__main__":
    for figure in main():
        print(figure.line())
