"""Which request the feeder sends next: a retry that has come due, else the next input item, read only now.

An input item becomes a `Job` here: validated, its URL and endpoint found, its tokens estimated. A line that
cannot be sent becomes its failure result at once (`ResultKind.INVALID`), without an attempt.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..base import strict_json
from ..base.errors import InvalidRequest
from ..base.models import APIRequest, RejectedLine, RequestResult, ResultKind
from ..providers.endpoints import check_request
from ..providers.registry import with_service_tier
from ..providers.token_estimation import TokenEstimator, output_reservation
from .context import RunContext
from .job import Job
from .source import END, PENDING, RequestItem, Source, from_mapping

__all__ = ["Intake", "with_tier"]

logger = logging.getLogger("rate_limited_processor")


class Intake:
    """Reads, validates and estimates the requests of a run, as the feeder asks for them."""

    __slots__ = ("_run", "_estimator", "_positions")

    def __init__(self, run: RunContext, estimator: TokenEstimator) -> None:
        self._run = run
        self._estimator = estimator
        self._positions = 0  # 1-based index given to plain dicts, for messages

    async def next_job(self, source: Source) -> Job | None:
        """A retry that is due, else a new request; waits while only future retries remain. None at the end."""
        run = self._run
        scheduler = run.scheduler
        while True:
            run.changed.clear()
            job = scheduler.due_retry(run.now())
            if job is not None:
                return job
            # While the run goes one request at a time, a request waiting for its retry is that one request.
            held_back = run.health.one_at_a_time and scheduler.retries_waiting > 0
            if not source.exhausted and scheduler.may_read() and not held_back:
                item = source.poll()
                if item is END:
                    continue
                if item is not PENDING:
                    admitted = self.admit(item)
                    if isinstance(admitted, Job):
                        return admitted
                    await run.deliver(admitted)
                    continue
            elif source.exhausted and not scheduler.retries_waiting and not run.in_flight:
                return None
            await run.wait_for_change(scheduler.next_retry_at(), source.fetching)

    def admit(self, item: RequestItem) -> Job | RequestResult:
        """Validate and estimate a request; a line that cannot be sent becomes its failure result."""
        position = self._run.scheduler.open()
        if isinstance(item, RejectedLine):
            metadata = {"custom_id": item.custom_id} if item.custom_id is not None else None
            return _invalid(item.index, item.content, metadata, item.reason, item.custom_id, position)
        if not isinstance(item, APIRequest):
            self._positions += 1
            item = from_mapping(item, self._positions)
            problem = strict_json.unsendable(item.body)  # a file's lines were read strictly; a caller's dicts were not
            if problem is not None:
                return _invalid(item.index, item.body, item.metadata, f"{item.name}: the request body {problem}", item.custom_id, position)
        item = with_tier(item, self._run.settings.service_tier)
        try:
            url, endpoint, prompt, completion = check_request(item, self._run.settings.request_url, self._estimator.estimate_parts)
            output_tokens = output_reservation(endpoint, item.body)
        except InvalidRequest as error:
            return _invalid(item.index, item.body, item.metadata, f"{item.name}: {error}", item.custom_id, position)
        model = item.body.get("model")
        tokens = endpoint.charged_tokens(prompt, completion)
        return Job(item, url, endpoint, tokens, prompt, completion, position, model=model if isinstance(model, str) else "", output_tokens=output_tokens)


def with_tier(item: APIRequest, tier: str | None) -> APIRequest:
    """A request with `service_tier` set to `tier` (`--service_tier`) when its body names none; a line's own stands."""
    body = with_service_tier(item.body, tier)
    return item if body is item.body else dataclasses.replace(item, body=body)


def _invalid(index: int, content: Any, metadata: Any, reason: str, custom_id: str | None, position: int) -> RequestResult:
    logger.error("%s (not sent)", reason)
    return RequestResult(
        index, content, metadata, response=None, errors=(reason,), attempts=0,
        kind=ResultKind.INVALID, custom_id=custom_id, position=position,
    )
