"""Benchmark an endpoint: streamed requests at Poisson arrivals, a report as JSON and as a page with charts.

Run: `.venv/bin/python examples/benchmark_report.py [OUTPUT_DIR]`. It starts the mock API streaming (a time
to first token, a gap between tokens, a 1,500 RPM limit it does not state, a few cut streams and 500s),
sends 400 chat requests at a Poisson rate of 30 a second (above that limit, so some are refused with 429s),
and writes `report.json` and `report.html` to OUTPUT_DIR (a temporary directory when none is given). This
is the run behind the README's screenshot. Nothing leaves this machine.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from rate_limited_processor.mock_server.child import MockProcess

REQUESTS = 400
MOCK = (
    "--requests_per_minute", "1500", "--no_ratelimit_headers", "--latency", "0.02", "--latency_jitter", "0.15",
    "--time_to_first_token", "0.08", "--inter_token_gap", "0.01", "--fault", "stream_cut=0.02", "--fault", "500=0.01", "--seed", "7",
)


def main() -> int:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="benchmark_"))
    output.mkdir(parents=True, exist_ok=True)
    requests = output / "requests.jsonl"
    with open(requests, "w", encoding="utf-8") as file:
        for i in range(REQUESTS):
            question = f"Question {i}: " + "tell me more " * (1 + i % 7)  # answers of 5 to 25 tokens
            file.write(json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}], "max_tokens": 64}) + "\n")
    results = output / "results.jsonl"
    results.unlink(missing_ok=True)  # a fresh benchmark, not a resumed one
    with MockProcess(*MOCK) as mock:
        command = [
            sys.executable, "-m", "rate_limited_processor", "--requests_filepath", str(requests), "--save_filepath", str(results),
            "--request_url", mock.url("chat/completions"), "--max_requests_per_minute", "3000", "--max_tokens_per_minute", "1000000",
            "--stream", "--arrivals", "poisson", "--request_rate", "30", "--no_progress",
            "--report", str(output / "report.json"), "--report_html", str(output / "report.html"),
        ]
        print("$ " + shlex.join(["python", *command[1:]]))
        finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        print(finished.stderr, file=sys.stderr)
        return finished.returncode
    report = json.loads((output / "report.json").read_text())
    print(f"{report['succeeded']} of {report['requests']} succeeded in {report['duration_s']:.1f}s; "
          f"{report['rate_limit_429s']} rate-limit 429s; errors by status {report['errors_by_status']}")
    for name in ("ttft_s", "itl_s", "latency_s"):
        figures = report[name]
        print(f"  {name:10} p50 {figures['p50'] * 1000:7.1f} ms   p95 {figures['p95'] * 1000:7.1f} ms   p99 {figures['p99'] * 1000:7.1f} ms")
    print(f"report: {output / 'report.json'}\npage:   {output / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
