"""The baseline a skeptic would write: a bare aiohttp loop that streams a requests file into a results file.

It reads the requests file line by line (never the whole file in memory), keeps `--concurrency` requests in
flight (that many workers, each taking the next line), POSTs each body, and appends each
`[request, response, metadata]` row with the standard json module, flushed, as the cookbook's script does.
No limits, no retries, no checks: what any hand-written client does at the least. Python's garbage
collector is left at its defaults, as a hand-written script leaves it.

`overhead.py` runs it in process (`bare_loop`) and as a whole process beside the command.

Run: .venv/bin/python benchmarks/bare_loop.py REQUESTS.jsonl URL RESULTS.jsonl [--concurrency 100] [--no_rows]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp


async def bare_loop(url: str, requests_path: Path, rows_path: Path, concurrency: int, *, rows: bool = True) -> int:
    """Send every line of `requests_path` to `url`, `concurrency` at a time; return the 200s."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    succeeded = 0
    with open(requests_path, encoding="utf-8") as lines, open(rows_path, "a", encoding="utf-8") as output:
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                nonlocal succeeded
                for line in lines:  # one file iterator shared by the workers: each takes the next line
                    body = json.loads(line)
                    metadata = body.pop("metadata", None)
                    async with session.post(url, json=body) as response:
                        answer = await response.json()
                    if rows:
                        output.write(json.dumps([body, answer, metadata]) + "\n")
                        output.flush()
                    succeeded += response.status == 200

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return succeeded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requests", type=Path)
    parser.add_argument("url")
    parser.add_argument("results", type=Path)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--no_rows", action="store_true", help="write nothing (the results file is still created)")
    args = parser.parse_args(argv)
    succeeded = asyncio.run(bare_loop(args.url, args.requests, args.results, args.concurrency, rows=not args.no_rows))
    print(f"{succeeded} succeeded", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
