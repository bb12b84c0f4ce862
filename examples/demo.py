"""`make demo`: a whole job against the embedded mock API, as a user would run it.

It starts the mock (`python -m rate_limited_processor.mock_server`) with a 3,000 RPM / 250,000 TPM limit,
a little latency and 2% injected faults, writes a file of chat requests, runs the real command on it,
and leaves the results in demo_output/. Nothing leaves this machine and no key is needed.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from rate_limited_processor.mock_server.child import MockProcess

REQUESTS = 500
OUTPUT_DIR = Path("demo_output")
MOCK_FLAGS = [
    "--requests_per_minute", "3000", "--tokens_per_minute", "250000",
    "--latency", "0.05", "--latency_jitter", "0.2",
    "--fault", "500=0.01", "--fault", "reset=0.005", "--fault", "html_502=0.005", "--seed", "1",
]
TOPICS = ["rate limits", "token buckets", "exponential backoff", "idempotency", "JSON Lines", "tiktoken"]


def write_requests(path: Path) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for i in range(REQUESTS):
            request = {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You explain engineering ideas in one sentence."},
                    {"role": "user", "content": f"Explain {TOPICS[i % len(TOPICS)]} (variant {i})."},
                ],
                "max_tokens": 60,
                "metadata": {"row": i},
            }
            file.write(json.dumps(request) + "\n")
        file.write("this line is not JSON, to show how bad input is recorded\n")


def main() -> int:
    OUTPUT_DIR.mkdir(exist_ok=True)
    requests_path = OUTPUT_DIR / "requests.jsonl"
    save_path = OUTPUT_DIR / "results.jsonl"
    save_path.unlink(missing_ok=True)
    write_requests(requests_path)
    with MockProcess(*MOCK_FLAGS) as mock:
        base_url = mock.base_url
        command = [
            sys.executable, "-m", "rate_limited_processor",
            "--requests_filepath", str(requests_path), "--save_filepath", str(save_path),
            "--request_url", f"{base_url}/chat/completions",
            "--max_requests_per_minute", "3000", "--max_tokens_per_minute", "250000",
        ]
        print(f"Mock OpenAI API at {base_url} (3,000 RPM, 250,000 TPM, 2% injected faults)")
        print(f"{REQUESTS} chat requests and one bad line in {requests_path}; running:\n")
        print("  " + shlex.join(["python", *command[1:]]) + "\n", flush=True)
        code = subprocess.call(command)
    first = json.loads(save_path.read_text(encoding="utf-8").splitlines()[0])
    print(f"\nFirst result row ([request, response, metadata]):\n  {json.dumps(first)[:300]}…")
    print(f"\nExit code {code}: 1 means some lines failed (here, the deliberate bad line). See README.md for more.")
    return 0 if code in (0, 1) else code


if __name__ == "__main__":
    sys.exit(main())
