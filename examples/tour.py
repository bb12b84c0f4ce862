"""A tour of what fits the account you have, each step a real command against the mock API.

Run: `.venv/bin/python examples/tour.py`. It shows, in order:
  1. --dry_run: count, tokens, which limit binds, expected time; nothing sent
  2. limits learned from the API: no limit flags, a server that counts characters as OpenAI does
  3. a Batch API file (mixed endpoints) in, Batch output out
  4. Azure's URL form and api-key header
  5. --header for a gateway, --headroom, and --ordered output
Nothing leaves this machine.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from rate_limited_processor.mock_server.child import MockProcess

HERE = Path(__file__).resolve().parent


def run(title: str, *args: str, show: int = 14) -> None:
    """Run the command, print it and the last lines it wrote to stderr/stdout (the summary)."""
    command = [sys.executable, "-m", "rate_limited_processor", "--no_progress", *args]
    print(f"\n=== {title}\n$ " + shlex.join(["python", *command[1:]]))
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "could not load tiktoken" not in line]
    print("\n".join(lines[-show:]))
    print(f"(exit code {result.returncode})")


def chat_file(path: Path, n: int) -> Path:
    with open(path, "w") as file:
        for i in range(n):
            padding = " " * 40  # characters the server counts, tiktoken barely does
            content = f"Question {i}:{padding}what is {i} squared?"
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": 30, "metadata": {"row": i}}
            file.write(json.dumps(body) + "\n")
    return path


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="rlp_tour_"))
    questions = chat_file(work / "questions.jsonl", 150)
    with MockProcess("--requests_per_minute", "1200", "--tokens_per_minute", "40000", "--token_counting", "chars", "--api_key", "sk-tour") as mock:
        base = mock.base_url
        chat_url = f"{base}/chat/completions"
        run("1. Plan a job without sending it", "--requests_filepath", str(questions), "--request_url", chat_url,
            "--dry_run", "--max_requests_per_minute", "1200", "--max_tokens_per_minute", "40000")
        run("2. No limit flags: limits learned from x-ratelimit headers, paced to the server's own count",
            "--requests_filepath", str(questions), "--save_filepath", str(work / "learned.jsonl"),
            "--request_url", chat_url, "--api_key", "sk-tour")
        run("3. A Batch API file: each line's url picks its endpoint; Batch output by default",
            "--requests_filepath", str(HERE / "batch_requests.jsonl"), "--save_filepath", str(work / "batch_out.jsonl"),
            "--request_url", base, "--api_key", "sk-tour", show=6)
        print("first Batch output line:", (work / "batch_out.jsonl").read_text().splitlines()[0][:200], "…")
        azure = base.removesuffix("/v1") + "/openai/deployments/my-deployment/embeddings?api-version=2024-10-21"
        run("4. Azure's URL form (the key goes in an api-key header)",
            "--requests_filepath", str(HERE / "embedding_requests.jsonl"), "--save_filepath", str(work / "azure.jsonl"),
            "--request_url", azure, "--api_key", "sk-tour", show=6)
        run("5. A gateway header, 80% headroom for other traffic, results in input order",
            "--requests_filepath", str(HERE / "chat_requests.jsonl"), "--save_filepath", str(work / "ordered.jsonl"),
            "--request_url", chat_url, "--api_key", "sk-tour", "--header", "X-Team: research",
            "--headroom", "0.8", "--ordered", show=6)
        rows = [json.loads(line)[2]["row"] for line in (work / "ordered.jsonl").read_text().splitlines()]
        print("rows in the output, in order:", rows)
    print(f"\nAll files are in {work}")


if __name__ == "__main__":
    main()
