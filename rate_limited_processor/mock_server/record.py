"""What the mock served, one small entry per request, so tests can assert each request succeeded exactly once.

Usage::

    sent = Counter(request_key(body) for body in bodies)
    assert server.record.served_ok_keys() == sent       # every request answered 200 exactly once
    assert server.record.counts()[429] > 0               # and the limiter did push back

A request is identified by `request_key`: the SHA-256 of its body as canonical JSON (sorted keys, no
spaces, no top-level "metadata"), so the key does not depend on how the client serialised it. Entries hold
no bodies, only the key: a 20,000-request run keeps a few megabytes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..base import strict_json
from ..providers.endpoints import Endpoint

__all__ = ["Outcome", "Served", "ServedLog", "request_key", "raw_request_key", "RESET", "HANG", "DISCONNECTED", "CUT"]

#: The requests-file field that rides along with a request but is never sent.
METADATA_FIELD = "metadata"
#: An HTTP status, or one of the outcomes below for requests that got no HTTP answer.
Outcome = int | str
#: The connection was reset instead of answered (the "reset" fault).
RESET = "reset"
#: The request was left hanging (the "hang" fault) until the client gave up or the server stopped.
HANG = "hang"
#: The client went away (or the server stopped) while a successful answer was being delayed by `latency`.
DISCONNECTED = "disconnected"
#: A streamed answer stopped half way, its body ended with no [DONE] (the "stream_cut" fault).
CUT = "cut"


def request_key(body: Any) -> str:
    """The key a request is recorded under: SHA-256 hex of its body as canonical JSON, "metadata" aside.

    A top-level "metadata" is left out because the processor strips it before sending: a test can pass a
    line of its requests file as it wrote it and get the key of the body the server received.
    """
    if isinstance(body, dict) and METADATA_FIELD in body:
        body = {name: value for name, value in body.items() if name != METADATA_FIELD}
    return hashlib.sha256(strict_json.canonical(body)).hexdigest()


def raw_request_key(raw: bytes) -> str:
    """The key of a body that is not JSON at all: SHA-256 hex of its bytes."""
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True, slots=True)
class Served:
    """One request that reached the mock, and what became of it."""

    #: `time.monotonic()` when the request reached the handler (after its body was read).
    arrived_at: float
    endpoint: Endpoint
    #: The status answered, or RESET, HANG or DISCONNECTED.
    outcome: Outcome
    #: `request_key` of the body (`raw_request_key` if it was not JSON).
    key: str
    #: Tokens charged against TPM (0 when not admitted or when no TPM limit is set).
    tokens: int = 0
    #: For a 429 that said when to come back (a rate limit, or the "azure_429" fault): the seconds it said.
    retry_after: float | None = None
    #: A streamed answer: when its first event went out, its first token, and each token step.
    first_byte_at: float | None = None
    first_token_at: float | None = None
    token_times: tuple[float, ...] = ()
    #: When a 200 was answered: its last byte went out (a stream's end), or the whole answer was handed over.
    finished_at: float | None = None


class ServedLog:
    """The entries in arrival order, with the summaries tests ask for."""

    __slots__ = ("entries",)

    #: Every request that reached the handler, in arrival order.
    entries: list[Served]

    def __init__(self) -> None:
        self.entries = []

    def __repr__(self) -> str:
        return f"ServedLog({len(self.entries)} requests, {dict(self.counts())})"

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Served]:
        return iter(self.entries)

    def append(self, entry: Served) -> None:
        self.entries.append(entry)

    def clear(self) -> None:
        """Forget everything (e.g. after a warm-up phase)."""
        self.entries.clear()

    def served_ok_keys(self) -> Counter[str]:
        """How many times each request key was answered 200: a correct run has every count at 1."""
        return Counter(entry.key for entry in self.entries if entry.outcome == 200)

    def counts(self) -> Counter[Outcome]:
        """Requests per outcome (status or RESET, HANG, DISCONNECTED)."""
        return Counter(entry.outcome for entry in self.entries)

    def count(self, outcome: Outcome) -> int:
        """Requests with this one outcome."""
        return sum(1 for entry in self.entries if entry.outcome == outcome)

    def summary(self) -> dict[str, Any]:
        """JSON-ready totals, as GET /mock/stats serves them and the CLI prints them."""
        by_status = {str(outcome): n for outcome, n in sorted(self.counts().items(), key=lambda item: str(item[0]))}
        return {"total": len(self.entries), "by_status": by_status}
