"""Run the mock in-process, for tests, benchmarks and the demo.

Usage::

    async with MockServer(MockConfig(requests_per_minute=600, faults={"500": 0.05})) as server:
        await run_job(request_url=server.url("chat/completions"), ...)
        assert server.record.served_ok_keys() == expected

It listens on a free loopback port unless told otherwise, and stops promptly even with requests hanging.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..base.clock import Now, loop_time
from .api import AZURE_PREFIX, OPENAI_PREFIX, MockApi
from .app import STATS_PATH, create_app
from .config import MockConfig
from .errors import DEFAULT_AZURE_API_VERSION
from .record import ServedLog

__all__ = ["MockServer", "SHUTDOWN_TIMEOUT"]

#: Seconds a stopping server gives handlers to finish. In-flight handlers are cancelled first, so this only
#: bounds how long a stop can take.
SHUTDOWN_TIMEOUT = 1.0
#: The deployment name `azure_url` uses when none is given.
DEFAULT_DEPLOYMENT = "mock-deployment"


class MockServer:
    """The mock API on a real socket, as an async context manager (or `start()` / `close()`)."""

    __slots__ = ("config", "host", "port", "api", "_runner")

    config: MockConfig
    host: str
    #: The port asked for (0: any free one) until started, then the port actually listened on.
    port: int
    #: The handler and its state; `record` is its record.
    api: MockApi

    def __init__(
        self,
        config: MockConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Now = loop_time,
    ) -> None:
        self.config = config if config is not None else MockConfig()
        self.host = host
        self.port = port
        self.api = MockApi(self.config, clock=clock)
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        where = self.base_url if self._runner is not None else "not started"
        return f"MockServer({where}, {self.config!r})"

    @property
    def record(self) -> ServedLog:
        """What the server has served so far."""
        return self.api.record

    @property
    def origin(self) -> str:
        """Scheme, host and port, e.g. "http://127.0.0.1:54321"."""
        if self._runner is None:
            raise RuntimeError("the mock server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, e.g. "http://127.0.0.1:54321/v1"."""
        return self.origin + OPENAI_PREFIX

    @property
    def stats_url(self) -> str:
        return self.origin + STATS_PATH

    def url(self, endpoint: str = "chat/completions") -> str:
        """The full URL of one endpoint, e.g. `url("embeddings")`."""
        return f"{self.base_url}/{endpoint.strip('/')}"

    def azure_url(
        self,
        endpoint: str = "chat/completions",
        *,
        deployment: str = DEFAULT_DEPLOYMENT,
        api_version: str = DEFAULT_AZURE_API_VERSION,
    ) -> str:
        """The Azure-style URL of one endpoint: /openai/deployments/{deployment}/{endpoint}?api-version=…"""
        return f"{self.origin}{AZURE_PREFIX}/{deployment}/{endpoint.strip('/')}?api-version={api_version}"

    async def start(self) -> MockServer:
        """Listen, and load the tokenizer if TPM is limited (so the first request is not slow)."""
        if self._runner is not None:
            raise RuntimeError("the mock server is already started")
        self.api.warm_up()
        runner = web.AppRunner(
            create_app(self.api),
            access_log=None,  # a log line per request would be the bottleneck
            handler_cancellation=True,  # a client that disconnects cancels its hanging or delayed handler
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def close(self) -> None:
        """Stop listening; cancel hanging and delayed handlers first so this takes milliseconds."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.api.cancel_in_flight()
        await runner.cleanup()

    async def __aenter__(self) -> MockServer:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
