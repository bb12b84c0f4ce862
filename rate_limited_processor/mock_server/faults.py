"""Which fault, if any, each request meets: a seeded draw per request, so a failing run can be replayed.

Usage::

    plan = FaultPlan({"500": 0.02, "reset": 0.01}, seed=1, after=100)
    fault = plan.next()   # None for a healthy answer, else the FaultKind to inject

Pure: no I/O and no clock. The n-th request to arrive always gets the same fault for the same seed, so
"the 37th request was reset" reproduces run after run (which request *is* 37th depends on arrival order).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping

__all__ = ["FaultKind", "FaultPlan", "parse_fault", "validate_faults"]


class FaultKind(enum.Enum):
    """The failures real OpenAI and Azure endpoints produce, each named the way the CLI spells it."""

    #: 500 with OpenAI's JSON body, type "server_error".
    SERVER_ERROR = "500"
    #: 503 "The engine is currently overloaded".
    OVERLOADED = "503"
    #: The connection is reset (RST) with no response at all.
    RESET = "reset"
    #: No answer ever: the request waits until the client gives up (or the server shuts down).
    HANG = "hang"
    #: 502 with an HTML page, as a load balancer in front of the API sends.
    HTML_502 = "html_502"
    #: 429 "You exceeded your current quota": retrying cannot help.
    INSUFFICIENT_QUOTA = "insufficient_quota"
    #: 429 "Request too large … on tokens per min": retrying cannot help.
    TOO_LARGE = "too_large"
    #: 401 "Incorrect API key provided".
    INVALID_KEY = "401"
    #: Azure's 429 shape (no "type", code "429") with `retry-after: 1`.
    AZURE_429 = "azure_429"
    #: Anthropic's 529 "overloaded_error": the API is busy for everyone.
    ANTHROPIC_529 = "529"
    #: A streamed answer stops half way: its body ends with no [DONE] (a proxy timing the stream out). A
    #: request that asked for no stream is reset instead.
    STREAM_CUT = "stream_cut"


def validate_faults(faults: Mapping[str, float] | Mapping[FaultKind, float]) -> dict[FaultKind, float]:
    """The fault mapping with its kinds checked and parsed; raises ValueError on a typo or bad probability."""
    parsed: dict[FaultKind, float] = {}
    for name, probability in faults.items():
        try:
            kind = name if isinstance(name, FaultKind) else FaultKind(str(name))
        except ValueError:
            known = ", ".join(kind.value for kind in FaultKind)
            raise ValueError(f"unknown fault kind {name!r}; known kinds: {known}") from None
        if not (isinstance(probability, (int, float)) and 0.0 <= probability <= 1.0):
            raise ValueError(f"fault {kind.value!r} probability must be within [0, 1], got {probability!r}")
        parsed[kind] = float(probability)
    total = math.fsum(parsed.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"fault probabilities add up to {total:g}, more than 1")
    return parsed


def parse_fault(text: str) -> tuple[FaultKind, float]:
    """A CLI `--fault KIND=PROBABILITY` value, e.g. "500=0.02"."""
    name, separator, probability = text.partition("=")
    if not separator:
        raise ValueError(f"expected KIND=PROBABILITY, got {text!r}")
    try:
        value = float(probability)
    except ValueError:
        raise ValueError(f"probability in {text!r} is not a number") from None
    [(kind, checked)] = validate_faults({name.strip(): value}).items()
    return kind, checked


class FaultPlan:
    """Draws one uniform number per request (after the first `after`) and maps it onto the fault kinds.

    Kinds are laid out along [0, 1) in `FaultKind` order, whatever order the mapping came in, so the same
    seed and probabilities give the same sequence however the configuration was written.
    """

    __slots__ = ("_thresholds", "_after", "_rng", "_seen")

    #: (cumulative upper bound, kind), in FaultKind order; faults with probability 0 are left out.
    _thresholds: tuple[tuple[float, FaultKind], ...]
    #: Requests answered normally before any fault is drawn.
    _after: int
    _rng: random.Random
    #: Requests seen so far.
    _seen: int

    def __init__(self, faults: Mapping[str, float] | Mapping[FaultKind, float], *, seed: int = 0, after: int = 0) -> None:
        if after < 0:
            raise ValueError(f"after must not be negative, got {after}")
        probabilities = validate_faults(faults)
        thresholds = []
        bound = 0.0
        for kind in FaultKind:
            probability = probabilities.get(kind, 0.0)
            if probability > 0.0:
                bound += probability
                thresholds.append((bound, kind))
        self._thresholds = tuple(thresholds)
        self._after = after
        self._rng = random.Random(seed)
        self._seen = 0

    def __repr__(self) -> str:
        kinds = ", ".join(f"{kind.value}<{bound:g}" for bound, kind in self._thresholds)
        return f"FaultPlan([{kinds}], after={self._after}, seen={self._seen})"

    def next(self) -> FaultKind | None:
        """The fault for the next request to arrive, or None to answer it normally."""
        self._seen += 1
        if self._seen <= self._after or not self._thresholds:
            return None
        draw = self._rng.random()
        for bound, kind in self._thresholds:
            if draw < bound:
                return kind
        return None
