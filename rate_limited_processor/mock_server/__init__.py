"""An OpenAI-like API on loopback: rate limits, latency and failures on demand, and a record of what it served.

The project's tests, demo and benchmarks run against it, and users run it (`python -m
rate_limited_processor.mock_server --help`) to rehearse a job against their tier's limits before paying.

Usage::

    async with MockServer(MockConfig(requests_per_minute=500, tokens_per_minute=200_000)) as server:
        ...  # send requests to server.url("chat/completions")
    assert server.record.served_ok_keys() == Counter(request_key(body) for body in bodies)
    assert echo_of("chat/completions", response) == expected_echo("chat/completions", body)

Modules, one concern each: `config` (MockConfig), `responses` (success bodies and the echo helpers),
`errors` (error bodies), `streams` (answers as server-sent events), `faults` (seeded fault draws), `rate_limits` (the 429 gate), `counting` (TPM
token counts), `record` (what was served), `api` (MockApi: a request in, an answer out, no socket), `app`
(MockApi on an aiohttp socket), `server` (MockServer), `transport` (MockTransport: MockApi as the runner's
transport, for runs in virtual time), `child` (MockProcess), `__main__` (the command line).
"""

from .api import MockApi, MockRequest
from .config import DEFAULT_MODEL, ORGANIZATION, MockConfig
from .durations import go_duration
from .errors import mask_key
from .faults import FaultKind, FaultPlan
from .record import DISCONNECTED, HANG, RESET, Served, ServedLog, request_key
from .responses import echo_of, embedding_for, expected_echo, response_matches
from .server import MockServer
from .transport import MockTransport

__all__ = [
    "MockApi",
    "MockConfig",
    "MockRequest",
    "MockServer",
    "MockTransport",
    "FaultKind",
    "FaultPlan",
    "Served",
    "ServedLog",
    "request_key",
    "expected_echo",
    "echo_of",
    "response_matches",
    "embedding_for",
    "go_duration",
    "mask_key",
    "DEFAULT_MODEL",
    "ORGANIZATION",
    "RESET",
    "HANG",
    "DISCONNECTED",
]
