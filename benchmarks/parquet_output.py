"""Parquet against JSONL for an embeddings job: bytes on disk, the writer's cost, and a rerun's resume cost.

What it measures. 100,000 results of 1,536-float embeddings (text-embedding-3-small's size), each written
through the tool's own writers as a run writes them: `ResultWriter` (JSONL with its resume index) and
`ParquetResultWriter` (`--output_format parquet`). For each: the bytes on disk, the writer's CPU seconds
(process time, so a busy machine slows the wall clock but not this figure) and the peak memory the writer
added (tracemalloc, sampled), then the time `prepare_results_file` / `prepare_parquet_results` takes to find
every row done (what a rerun pays before sending anything).

How. The answers are made as the API makes them: floats of about 9 significant digits. 200 distinct answers are
cycled (making 100,000 would take longer than writing them); each result is a fresh `RequestResult`, its
response a fresh dict, so the writers do all their work per row. The answer's decoding (JSON from the API) is
the same for both formats and is not counted.

Targets (ours): Parquet at most 0.5x JSONL's bytes and at most 1.0x its CPU; a rerun's resume no slower than
JSONL's with its index.

Run: .venv/bin/python benchmarks/parquet_output.py [--rows 100000] [--dimensions 1536]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import Figure, format_table

from rate_limited_processor.base.models import RequestResult, ResultKind
from rate_limited_processor.files.parquet import ParquetResultWriter, prepare_parquet_results
from rate_limited_processor.files.request_io import ResultWriter
from rate_limited_processor.files.resume import prepare_results_file

DISTINCT_ANSWERS = 200


def answers(dimensions: int) -> list[list[float]]:
    rng = random.Random(1536)
    # As the API spells them: e.g. -0.011975429, 0.0027543711 (about 9 significant digits, often below 0.1).
    return [[float(f"{rng.gauss(0, 0.025):.9g}") for _ in range(dimensions)] for _ in range(DISTINCT_ANSWERS)]


def results(rows: int, vectors: list[list[float]]) -> Any:
    for i in range(rows):
        body = {"model": "text-embedding-3-small", "input": f"document {i}: the quick brown fox jumps over the lazy dog"}
        response = {
            "object": "list", "model": "text-embedding-3-small", "usage": {"prompt_tokens": 14, "total_tokens": 14},
            "data": [{"object": "embedding", "index": 0, "embedding": vectors[i % len(vectors)]}],
        }
        yield RequestResult(i + 1, body, {"row": i}, response=response, errors=(), attempts=1, kind=ResultKind.SUCCEEDED, status=200)


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(entry.stat().st_size for entry in path.iterdir())
    return path.stat().st_size + Path(f"{path}.index").stat().st_size


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
        Path(f"{path}.index").unlink()


def measure(name: str, path: Path, make_writer: Callable[[], Any], prepare: Callable[[], Any], rows: int, vectors: list[list[float]]) -> dict[str, float]:
    prepare()  # creates the file (and the JSONL index) as the job does before writing
    started_cpu, started = time.process_time(), time.perf_counter()
    with make_writer() as writer:
        for result in results(rows, vectors):
            writer.write(result)
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    remove(path)
    # Memory in a second pass over a quarter of the rows (tracemalloc slows allocation, so not in the CPU figure).
    prepare()
    tracemalloc.start()
    with make_writer() as writer:
        for result in results(max(1, rows // 4), vectors):
            writer.write(result)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    with make_writer() as writer:  # the rest, so the resume below finds every row
        for result in results(rows, vectors):
            if result.index > max(1, rows // 4):
                writer.write(result)
    started = time.perf_counter()
    done, _ = prepare()
    resume = time.perf_counter() - started
    assert len(done) == rows, (name, len(done))
    return {"bytes": size_of(path), "cpu": cpu, "wall": wall, "peak": peak, "resume": resume}


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dimensions", type=int, default=1_536)
    args = parser.parse_args(argv)
    vectors = answers(args.dimensions)
    directory = Path(tempfile.mkdtemp(prefix="parquet_bench_"))
    try:
        jsonl, parquet = directory / "results.jsonl", directory / "results.parquet"
        # The results' own memory (a fresh dict per row, shared vectors) is the same for both: tracemalloc's peak is
        # what the writer holds on top of one result.
        figures = {
            "jsonl": measure("jsonl", jsonl, lambda: ResultWriter(jsonl, index=True), lambda: prepare_results_file(jsonl), args.rows, vectors),
            "parquet": measure("parquet", parquet, lambda: ParquetResultWriter(parquet), lambda: prepare_parquet_results(parquet), args.rows, vectors),
        }
        parts = len(os.listdir(parquet))
    finally:
        shutil.rmtree(directory)
    print(format_table(["format", "MB on disk", "bytes/row", "writer CPU s", "writer wall s", "writer peak MB", "resume s"], [
        [name, f"{f['bytes'] / 1e6:,.0f}", f"{f['bytes'] / args.rows:,.0f}", f"{f['cpu']:.1f}", f"{f['wall']:.1f}", f"{f['peak'] / 1e6:.0f}",
         f"{f['resume']:.2f}"]
        for name, f in figures.items()
    ]))
    size_ratio = figures["parquet"]["bytes"] / figures["jsonl"]["bytes"]
    cpu_ratio = figures["parquet"]["cpu"] / figures["jsonl"]["cpu"]
    print(f"{args.rows:,} rows of {args.dimensions} floats; Parquet in {parts} parts; Parquet / JSONL: {size_ratio:.2f}x the bytes, "
          f"{cpu_ratio:.2f}x the writer's CPU")
    return [
        Figure("parquet bytes / jsonl bytes", size_ratio, "<=", 0.5),
        Figure("parquet writer CPU / jsonl writer CPU", cpu_ratio, "<=", 1.0),
    ]


if __name__ == "__main__":
    main()
