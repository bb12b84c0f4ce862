"""Resume: does a rerun cost in proportion to the number of rows, not to their size?

What it measures. The time the command takes to rerun a job all of whose 50,000 rows are already in the
results file: it reads and checks every input line, finds each one done, and sends nothing. Once with
embedding rows of 1,536 floats (about 15 KB a row, 750 MB in all) and once with rows of 4 floats (about
150 bytes), for the same input. Each run is the command line in a fresh process, as a user would run it,
so the figure includes start-up (about half a second).

Twice over: with the resume index the writer keeps beside the results (`<results>.index`), and without it
(a results file of an older version, or an index deleted), when every row is read back and parsed and the
index is written anew.

How. The results files are written by the tool's own writer (`ResultWriter` with its index), as a run
writes them, from generated results: no API is involved. Runs alternate (small, big, small, big, ...);
the best run of each is the figure (noise only slows), the median beside it.

Target: with the index, big / small <= 1.5.

Run: .venv/bin/python benchmarks/resume.py [--rows 50000] [--rounds 3] [--big 1536] [--small 4]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import Figure, embedding_request, format_table, without_metadata, write_jsonl

from rate_limited_processor.base.models import RequestResult, ResultKind
from rate_limited_processor.files.request_io import ResultWriter
from rate_limited_processor.files.resume import prepare_results_file, sidecar_path

TARGET_RATIO = 1.5
#: Nothing is sent (every line is done), but the command needs a URL: one that nothing listens on.
NOWHERE = "http://127.0.0.1:9/v1/embeddings"


def embedding_answer(floats: int, rng: random.Random) -> dict[str, Any]:
    """An answer as the mock gives it: numbers of six decimals (about 9 characters each, as in the issue's files)."""
    vector = [round(rng.uniform(-1, 1), 6) for _ in range(floats)]
    return {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}], "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 20, "total_tokens": 20}}


def write_results(path: Path, requests: list[dict[str, Any]], floats: int) -> None:
    """A results file (and its index) as a finished run leaves it."""
    rng = random.Random(floats)
    answers = [embedding_answer(floats, rng) for _ in range(100)]  # varied enough; generating 50,000 would take longer than the runs
    prepare_results_file(path)
    with ResultWriter(path, index=True) as writer:
        for i, request in enumerate(requests):
            result = RequestResult(i + 1, without_metadata(request), request["metadata"], answers[i % len(answers)], (), attempts=1, kind=ResultKind.SUCCEEDED)
            writer.write(result)


def rerun(requests_path: Path, results_path: Path, *, with_index: bool) -> float:
    """Seconds for the command to rerun the job (nothing left to send)."""
    if not with_index:
        sidecar_path(results_path, "index").unlink()
    command = [
        sys.executable, "-m", "rate_limited_processor", "--requests_filepath", str(requests_path), "--save_filepath", str(results_path),
        "--request_url", NOWHERE, "--max_requests_per_minute", "1e9", "--max_tokens_per_minute", "1e12", "--no_progress",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or "already done" not in done.stdout + done.stderr:
        raise RuntimeError(f"the rerun exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return seconds


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000, help="rows in the results file (default: 50000)")
    parser.add_argument("--rounds", type=int, default=3, help="reruns of each, alternating (default: 3)")
    parser.add_argument("--big", type=int, default=1536, help="floats per embedding in the big rows (default: 1536)")
    parser.add_argument("--small", type=int, default=4, help="floats per embedding in the small rows (default: 4)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rlp-resume-") as tmp:
        workdir = Path(tmp)
        requests = [embedding_request(i) for i in range(args.rows)]
        requests_path = write_jsonl(workdir / "requests.jsonl", requests)
        sizes = {"small": args.small, "big": args.big}
        results = {name: workdir / f"results_{name}.jsonl" for name in sizes}
        for name, floats in sizes.items():
            write_results(results[name], requests, floats)
        megabytes = {name: path.stat().st_size / 1e6 for name, path in results.items()}
        print(f"  results files: small {megabytes['small']:,.0f} MB, big {megabytes['big']:,.0f} MB", file=sys.stderr, flush=True)
        times: dict[tuple[str, bool], list[float]] = {(name, with_index): [] for name in sizes for with_index in (True, False)}
        for _ in range(args.rounds):
            for with_index in (True, False):
                for name in sizes:
                    seconds = rerun(requests_path, results[name], with_index=with_index)
                    times[name, with_index].append(seconds)
                    print(f"  {name} rows, {'with' if with_index else 'without'} the index: {seconds:.2f} s", file=sys.stderr, flush=True)

    best = {key: min(values) for key, values in times.items()}
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"\nResume: the command rerun over {args.rows:,} finished rows ({args.big} vs {args.small} floats each), fresh process, "
          f"{args.rounds} alternating runs of each")
    print(format_table(
        ["rows", "MB", "index", "best s", "median s"],
        [[name, f"{megabytes[name]:,.0f}", "with" if with_index else "without", f"{best[name, with_index]:.2f}", f"{median[name, with_index]:.2f}"]
         for with_index in (True, False) for name in sizes],
    ))
    ratio = best["big", True] / best["small", True]
    print(f"big / small with the index: best {ratio:.2f} (target <= {TARGET_RATIO}), median {median['big', True] / median['small', True]:.2f}; "
          f"without it (every row read): best {best['big', False] / best['small', False]:.2f}")
    return [Figure(f"resume {args.rows // 1000}k rows: {args.big} / {args.small} floats", ratio, "<=", TARGET_RATIO)]


if __name__ == "__main__":
    main()
