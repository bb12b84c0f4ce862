"""Whether the endpoint works and whether the server answers anyone: what makes the run go one request at a time.

Until something has succeeded, a failure about the endpoint makes the run probe with one request at a time (a wrong
URL costs one request's attempts, not the whole file's). Once something has succeeded, attempts that get no answer
while nobody has been answered since they were sent are an outage of the server, not the bad luck of a few requests:
from the `OUTAGE_ATTEMPTS`-th on, one request probes for everyone (`decisions.Probe`).
"""

from __future__ import annotations

import logging
import math

from ..config.credentials import Scrubber

__all__ = ["Health", "OUTAGE_ATTEMPTS"]

logger = logging.getLogger("rate_limited_processor")

#: Attempts in a row, across the run, that got no answer while nobody was answered: from this many on, it is an
#: outage of the server, not the bad luck of a few requests (one connection reset is not an outage).
OUTAGE_ATTEMPTS = 3


class Health:
    """What the run has seen of the server: a success yet, a failure about the endpoint, and its silences."""

    __slots__ = ("any_succeeded", "endpoint_failing", "last_answered", "silent_since", "silent_attempts", "_scrub")

    def __init__(self, scrub: Scrubber) -> None:
        #: Something has succeeded: the endpoint works. Until then, a failure about the endpoint makes the run
        #: probe with one request at a time, and stops it once that request's attempts are used up.
        self.any_succeeded = False
        self.endpoint_failing = False
        #: When the server last answered anything (any status), and since when it has answered nobody: an outage
        #: (None while it answers). See `decisions.Probe`.
        self.last_answered = -math.inf
        self.silent_since: float | None = None
        self.silent_attempts = 0
        self._scrub = scrub

    @property
    def one_at_a_time(self) -> bool:
        """While the endpoint has failed and nothing has succeeded, requests go one at a time; so they do while the
        server answers nobody (an outage: the one probes for everyone). Each lane's first request also goes alone
        (`Lane.probing`)."""
        return (self.endpoint_failing and not self.any_succeeded) or self.silent_attempts >= OUTAGE_ATTEMPTS

    def observe(self, *, succeeded: bool, about_the_endpoint: bool, answered: bool, started: float, now: float, reason: str) -> float | None:
        """An attempt sent at `started` ended at `now`. How long the server has answered nobody, once that is an
        outage; else None."""
        self.any_succeeded |= succeeded
        self.endpoint_failing |= about_the_endpoint
        if answered:
            self.last_answered = now
            self.silent_since = None
            self.silent_attempts = 0
        elif self.any_succeeded and self.last_answered < started:  # no answer, and nobody answered since it was sent
            if self.silent_since is None:
                self.silent_since = started
            self.silent_attempts += 1
            if self.silent_attempts == OUTAGE_ATTEMPTS:
                logger.warning("the server answers nobody (%s); probing it with one request at a time", self._scrub(reason))
            if self.silent_attempts >= OUTAGE_ATTEMPTS:
                return now - self.silent_since
        return None
