"""The steps both job modes share (jobs/pipeline.py): the stop signals, the rows of lines that are not sent, and the
results file a run made and wrote nothing in."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from rate_limited_processor.base.models import APIRequest, RejectedLine, ResultKind
from rate_limited_processor.files.resume import INDEX_KIND, sidecar_path
from rate_limited_processor.jobs.pipeline import invalid_row, opened_output, stop_signals


def test_the_first_stop_signal_and_the_ones_after_it_go_to_their_own_handlers_until_the_job_ends() -> None:
    calls: list[str] = []

    async def job() -> None:
        with stop_signals(True, lambda name: calls.append(f"first {name}"), lambda name: calls.append(f"again {name}")):
            for count, sig in enumerate((signal.SIGHUP, signal.SIGTERM, signal.SIGHUP), start=1):
                os.kill(os.getpid(), sig)
                for _ in range(1000):  # the loop hands the signal on at its next turn
                    if len(calls) == count:
                        break
                    await asyncio.sleep(0.001)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # removed with the job: the default again

    asyncio.run(job())
    assert calls == ["first SIGHUP", "again SIGTERM", "again SIGHUP"]


def test_without_signal_handling_the_job_leaves_the_signals_alone() -> None:
    async def job() -> None:
        with stop_signals(False, lambda name: None, lambda name: None):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    asyncio.run(job())


def test_a_line_that_is_not_sent_gets_an_invalid_row_with_its_reason() -> None:
    rejected = invalid_row(RejectedLine(3, "line 3: not JSON", "{not json", custom_id="c-3"))
    assert (rejected.index, rejected.request, rejected.metadata, rejected.errors) == (3, "{not json", {"custom_id": "c-3"}, ("line 3: not JSON",))
    refused = invalid_row(APIRequest(4, {"model": "m"}, {"k": 1}), "line 4: no such endpoint")
    assert (refused.request, refused.metadata, refused.errors, refused.attempts) == ({"model": "m"}, {"k": 1}, ("line 4: no such endpoint",), 0)
    assert rejected.kind is refused.kind is ResultKind.INVALID


def test_a_results_file_the_job_made_and_wrote_nothing_in_is_removed_with_its_index(tmp_path: Path) -> None:
    requests, results = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    requests.write_text("")
    with opened_output(requests, results, "auto", retry_failed=False, tidy=True):
        results.touch()
        sidecar_path(results, INDEX_KIND).touch()
    assert not results.exists() and not sidecar_path(results, INDEX_KIND).exists()
    with opened_output(requests, results, "auto", retry_failed=False):  # not asked to tidy: it stays
        results.touch()
    assert results.exists()
