"""rate_limited_processor.ray: a Ray dataset's requests through one processor per worker, limits shared through Redis.

The worker is tested as a plain object first (no Ray: fast), against the mock in its own process and a real
redis-server: one processor across batches, error rows, answers kept for a batch run again. Then Ray itself
(2 CPUs, as the issue's judge), end to end.
"""

from __future__ import annotations

import os
import pickle
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from rate_limited_processor import Settings
from rate_limited_processor.base.errors import UsageError
from rate_limited_processor.mock_server.child import MockProcess
from tests.helpers import chat_request
from tests.redis_server import running_redis

pa = pytest.importorskip("pyarrow", reason="the ray extra is not installed")
pytest.importorskip("redis", reason="the ray extra is not installed")

from rate_limited_processor.ray import PortableSettings, _Worker, process_dataset  # noqa: E402


def rows(numbers: range) -> list[dict[str, Any]]:
    out = []
    for i in numbers:
        request = chat_request(i)
        metadata = request.pop("metadata")
        out.append({"request": request, "metadata": metadata})
    return out


def answered_question(row: dict[str, Any]) -> bool:
    """The mock echoes the question: the row's answer is its own request's."""
    return row["response"]["choices"][0]["message"]["content"] == "echo: " + row["request"]["messages"][-1]["content"]


def as_rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


@pytest.fixture(scope="module")
def mock() -> Iterator[MockProcess]:
    with MockProcess("--requests_per_minute", "60000", "--tokens_per_minute", "100000000") as process:
        yield process


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as (url, _):
        yield url


# -- the key does not travel -------------------------------------------------------------------------------


def test_settings_with_a_key_cannot_be_pickled_but_their_portable_form_can_and_holds_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-the-workers-read-me-1234567890")
    settings = Settings(request_url="https://api.openai.com/v1/chat/completions")
    with pytest.raises(TypeError, match="Secret cannot be pickled"):
        pickle.dumps(settings)
    payload = pickle.dumps(PortableSettings.of(settings))
    assert b"sk-test" not in payload
    portable = pickle.loads(payload)
    assert portable.key_variable == "OPENAI_API_KEY"
    assert portable.settings().key is not None and portable.settings().key.reveal() == "sk-test-the-workers-read-me-1234567890"
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match=r"\$OPENAI_API_KEY is not set on this Ray worker"):
        portable.settings()


@pytest.mark.parametrize("variables", [("OPENAI_API_KEY",), ("AZURE_OPENAI_API_KEY",), ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY")])
def test_an_azure_key_travels_in_the_variable_it_was_read_from(monkeypatch: pytest.MonkeyPatch, variables: tuple[str, ...]) -> None:
    for variable in variables:
        monkeypatch.setenv(variable, f"key-in-{variable}-0123456789")
    settings = Settings(request_url="https://x.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21")
    portable = PortableSettings.of(settings)
    assert portable.key_variable == variables[0]  # Azure's own first, else OpenAI's (as earlier releases read it)
    key = portable.settings().key
    assert key is not None and key.reveal() == f"key-in-{variables[0]}-0123456789"


def test_a_key_given_only_in_code_is_refused_as_it_cannot_reach_the_workers() -> None:
    settings = Settings(request_url="https://api.openai.com/v1/chat/completions", api_key="sk-only-in-this-process-1234567890")
    with pytest.raises(UsageError, match=r"set it in \$OPENAI_API_KEY on every worker") as refused:
        PortableSettings.of(settings)
    assert "sk-only" not in str(refused.value)


def test_no_key_stays_no_key() -> None:
    portable = PortableSettings.of(Settings(request_url="http://127.0.0.1:9/v1/chat/completions", api_key=None))
    assert portable.key_variable is None and portable.settings().key is None


def test_several_workers_without_redis_are_refused() -> None:
    settings = Settings(request_url="http://127.0.0.1:9/v1/chat/completions", api_key=None)
    with pytest.raises(UsageError, match="concurrency=4 needs redis_url"):
        process_dataset(object(), settings, concurrency=4)  # type: ignore[arg-type]  # refused before the dataset is touched


# -- one worker, without Ray ----------------------------------------------------------------------------------


def test_one_processor_serves_batch_after_batch_with_one_row_out_per_row_in(mock: MockProcess) -> None:
    worker = _Worker(PortableSettings.of(Settings(request_url=mock.url("chat/completions"), api_key=None)), None, None, "job-a", 0)
    try:
        processor = worker.processor
        first = as_rows(worker(pa.Table.from_pylist(rows(range(0, 40)))))
        bad: list[dict[str, Any]] = [{"request": '{"model": "gpt-4o-mini", "messages": ', "metadata": {"id": "torn"}}, {"request": [1, 2], "metadata": None}]
        # Rows Arrow could not hold in one column (text beside a list): straight to the batch step.
        second = as_rows(worker._call(worker._batch(rows(range(40, 70)) + bad)))
    finally:
        worker.close()
    assert worker.processor is processor and processor.stats.succeeded == 70  # the same run, its counts carried over
    assert [row["metadata"]["id"] for row in first] == list(range(40))  # in the batch's order
    assert all(row["error"] is None and answered_question(row) for row in first + second[:30])
    assert [row["metadata"] for row in second[30:]] == [{"id": "torn"}, None]
    assert "not JSON" in second[30]["error"] and "must be a JSON object" in second[31]["error"]
    assert second[30]["response"] is None and second[31]["response"] is None


def test_a_batch_run_again_takes_the_answers_kept_in_redis_and_pays_only_for_the_rest(mock: MockProcess, redis_url: str) -> None:
    """What a worker that died leaves: the answers it got are in Redis; the batch, run again elsewhere, sends the rest."""
    portable = PortableSettings.of(Settings(request_url=mock.url("chat/completions"), api_key=None))
    job = f"job-{os.getpid()}-{time.monotonic_ns()}"
    served = mock.stats()["by_status"].get("200", 0)
    dying = _Worker(portable, redis_url, "test-kept-answers", job, 3_600)
    try:
        dying._call(dying._batch(rows(range(0, 25))))  # it got this far, then died
    finally:
        dying.close()
    again = _Worker(portable, redis_url, "test-kept-answers", job, 3_600)
    try:
        out = as_rows(again._call(again._batch(rows(range(0, 50)))))
    finally:
        again.close()
    assert mock.stats()["by_status"].get("200", 0) - served == 50  # 25 + 25: none of the first 25 twice
    assert [row["metadata"]["id"] for row in out] == list(range(50)) and all(answered_question(row) for row in out)
    other_job = _Worker(portable, redis_url, "test-kept-answers", job + "-other", 3_600)
    try:
        other_job._call(other_job._batch(rows(range(0, 5))))
    finally:
        other_job.close()
    assert mock.stats()["by_status"].get("200", 0) - served == 55  # another job's answers are its own


# -- Ray, end to end ------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_judge_smaller_four_workers_share_one_account_through_redis() -> None:
    """The issue's judge, scaled down: 1,200 chat requests in 8 blocks, 4 workers on a local Ray of 2 CPUs, one
    account at 1,200 RPM on the strict mock. Every request once, its own answer and metadata, no error rows,
    <= 1% 429s, and within 1.25x the ideal (59 s) with the workers' start-up (~6 s here) included."""
    ray = pytest.importorskip("ray")
    requests = 1_200
    with MockProcess("--requests_per_minute", "1200", "--tokens_per_minute", "10000000") as limited, running_redis() as (url, _):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            ds = ray.data.from_items(rows(range(requests)), override_num_blocks=8)
            started = time.monotonic()
            out = process_dataset(ds, Settings(request_url=limited.url("chat/completions"), api_key=None), redis_url=url, concurrency=4, batch_size=None)
            taken = out.take_all()
            wall = time.monotonic() - started
        finally:
            ray.shutdown()
        served = limited.stats()["by_status"]
    ideal = (requests - 20) / 20
    ids = Counter(row["metadata"]["id"] for row in taken)
    print(f"{requests} requests: {wall:.1f}s, ideal {ideal:.0f}s ({wall / ideal:.2f}x); mock {served}")
    assert sorted(ids) == list(range(requests)) and max(ids.values()) == 1
    assert all(row["error"] is None and answered_question(row) for row in taken)
    assert served.get("429", 0) <= requests * 0.01
    assert wall <= 1.25 * ideal


def _our_map_workers() -> list[int]:
    """The pids of this test's Ray map workers: processes titled ray::MapWorker descending from this process."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                if not file.read().startswith(b"ray::MapWorker"):
                    continue
            pid = int(entry)
            while pid > 1 and pid != me:
                with open(f"/proc/{pid}/stat") as stat:
                    pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if pid == me:
            found.append(int(entry))
    return found


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_worker_killed_mid_batch_costs_only_its_requests_in_flight() -> None:
    """kill -9 a worker mid-run: Ray runs its batch again on a new actor, which takes the answers kept in
    Redis. Every row once, no error rows, and the mock answers at most the requests that were in flight twice."""
    import signal
    import threading

    ray = pytest.importorskip("ray")
    requests = 600
    with MockProcess("--requests_per_minute", "1200", "--tokens_per_minute", "10000000", "--latency", "0.2") as limited, running_redis() as (url, _):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            ds = ray.data.from_items(rows(range(requests)), override_num_blocks=2)  # big batches: the one killed has many answers behind it
            out = process_dataset(ds, Settings(request_url=limited.url("chat/completions"), api_key=None), redis_url=url, concurrency=2, batch_size=None)
            taken: list[dict[str, Any]] = []
            consumer = threading.Thread(target=lambda: taken.extend(out.take_all()))
            consumer.start()
            deadline = time.monotonic() + 60
            while limited.stats()["by_status"].get("200", 0) < 150:  # well into the run, a batch half done
                assert time.monotonic() < deadline and consumer.is_alive()
                time.sleep(0.2)
            workers = _our_map_workers()  # Ray may have given every block to the first worker up: kill one at work
            assert workers
            os.kill(workers[0], signal.SIGKILL)
            consumer.join(timeout=240)
            assert not consumer.is_alive()
        finally:
            ray.shutdown()
        served = limited.stats()["by_status"]
    ids = Counter(row["metadata"]["id"] for row in taken)
    print(f"mock answered {served}")
    assert sorted(ids) == list(range(requests)) and max(ids.values()) == 1
    assert all(row["error"] is None and answered_question(row) for row in taken)
    assert requests <= served.get("200", 0) <= requests + 10  # at most the dead worker's requests in flight (0.2 s at 10/s each)
