"""The collector's threshold while runs go: raised for the run, put back after the last one, a user's own kept."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from rate_limited_processor import UNLIMITED, Processor, Settings, TransportRequest, TransportResponse, json_response
from rate_limited_processor.engine.collector import RUN_THRESHOLD, fewer_collections
from tests.helpers import chat_request, mock_url
from tests.virtual_time import run_virtual


@pytest.fixture(autouse=True)
def python_defaults() -> Iterator[None]:
    """Each test starts from CPython's thresholds and leaves the process as it found it."""
    found = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*found)


def test_a_run_raises_the_youngest_threshold_and_puts_it_back() -> None:
    with fewer_collections():
        assert gc.get_threshold() == (RUN_THRESHOLD, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_the_last_of_overlapping_runs_puts_it_back() -> None:
    first, second = fewer_collections(), fewer_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second still goes
    assert gc.get_threshold()[0] == RUN_THRESHOLD
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize("own", [(0, 10, 10), (50_000, 5, 5)], ids=["collection off", "higher already"])
def test_a_threshold_of_the_users_own_is_kept(own: tuple[int, int, int]) -> None:
    gc.set_threshold(*own)
    with fewer_collections():
        assert gc.get_threshold() == own
    assert gc.get_threshold() == own


def test_a_threshold_changed_during_the_run_is_not_undone() -> None:
    with fewer_collections():
        gc.set_threshold(2_000, 10, 10)
    assert gc.get_threshold() == (2_000, 10, 10)


def test_the_threshold_is_put_back_when_the_run_fails() -> None:
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("the run failed")
    assert gc.get_threshold() == (700, 10, 10)


def test_a_processor_run_holds_it_from_the_first_send_to_the_last() -> None:
    seen: list[int] = []

    async def answer(request: TransportRequest) -> TransportResponse:
        seen.append(gc.get_threshold()[0])
        return json_response({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    async def run() -> int:
        processor = Processor(Settings(request_url=mock_url(), api_key=None, limits=UNLIMITED), transport=answer)
        return sum([result.succeeded async for result in processor.process([chat_request(i) for i in range(3)])])

    assert run_virtual(run()) == 3
    assert seen == [RUN_THRESHOLD] * 3
    assert gc.get_threshold() == (700, 10, 10)
