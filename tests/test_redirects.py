"""Redirects: credentials never go to another origin.

Two real servers on two ports. "home" is where the user pointed the tool (it gets the key and the
`--header` values); "elsewhere" is another origin a redirect points at, recording every header that
reaches it. aiohttp alone forwards `api-key`, `x-api-key` and custom headers across origins (it strips
only `Authorization`); the transport follows redirects itself so that none of them does.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from rate_limited_processor import UNLIMITED, Processor, RequestResult, RetryPolicy, Settings
from tests.helpers import chat_request, serving

KEY = "sk-redirect-test-KEY-0123456789abcdef"
EXTRA = {"X-Gateway-Token": "gateway-secret-0123456789", "x-api-key": "x-api-key-secret-0123456789"}
SECRETS = [KEY, *EXTRA.values()]


def answer(note: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": note}}]}


@dataclass
class Server:
    """A loopback server that records the headers and bodies of what reached it."""

    seen: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    url: str = ""

    def record(self, request: web.Request, body: bytes) -> None:
        self.seen.append((request.path, dict(request.headers), json.loads(body) if body else None))

    def leaked(self) -> list[str]:
        """Every credential that reached this server, by header name or by value."""
        found = []
        for _, headers, _ in self.seen:
            for name, value in headers.items():
                if name.lower() in ("authorization", "api-key", "x-api-key", "x-gateway-token") or any(secret in value for secret in SECRETS):
                    found.append(f"{name}: {value}")
        return found


async def start(routes: dict[str, Any], server: Server, running: contextlib.AsyncExitStack) -> None:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    server.url = await running.enter_async_context(serving(app))


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Server, Server]]:
    home, elsewhere = Server(), Server()

    async def answering(server: Server) -> Any:
        async def handle(request: web.Request) -> web.Response:
            server.record(request, await request.read())
            return web.json_response(answer(f"from {request.path}"))

        return handle

    def redirecting(server: Server, status: int, location: Any) -> Any:
        async def handle(request: web.Request) -> web.Response:
            server.record(request, await request.read())
            return web.Response(status=status, headers={"Location": location() if callable(location) else location})

        return handle

    async with contextlib.AsyncExitStack() as running:
        back_home = redirecting(elsewhere, 307, lambda: home.url + "/v1/chat/completions")
        await start({"/v1/chat/completions": await answering(elsewhere), "/back": back_home}, elsewhere, running)
        to_elsewhere = lambda: elsewhere.url + "/v1/chat/completions"  # noqa: E731
        await start(
            {
                "/v1/chat/completions": await answering(home),
                "/same/v1/chat/completions": redirecting(home, 307, "/v1/chat/completions"),  # relative: same origin
                "/cross307/v1/chat/completions": redirecting(home, 307, to_elsewhere),
                "/cross308/v1/chat/completions": redirecting(home, 308, to_elsewhere),
                "/hostname/v1/chat/completions": redirecting(home, 307, lambda: home.url.replace("127.0.0.1", "localhost") + "/v1/chat/completions"),
                "/there-and-back/v1/chat/completions": redirecting(home, 307, lambda: elsewhere.url + "/back"),
                "/openai/deployments/d/chat/completions": redirecting(home, 307, lambda: elsewhere.url + "/v1/chat/completions"),
                "/moved301/v1/chat/completions": redirecting(home, 301, to_elsewhere),
                "/see-other303/v1/chat/completions": redirecting(home, 303, to_elsewhere),
                "/loop/v1/chat/completions": redirecting(home, 307, "/loop/v1/chat/completions"),
                "/ftp/v1/chat/completions": redirecting(home, 307, "ftp://127.0.0.1/v1/chat/completions"),
            },
            home,
            running,
        )
        yield home, elsewhere


async def send(url: str) -> RequestResult:
    settings = Settings(request_url=url, api_key=KEY, limits=UNLIMITED, extra_headers=EXTRA, retry=RetryPolicy(max_attempts=1))
    results = [result async for result in Processor(settings).process([chat_request(1)])]
    assert len(results) == 1
    return results[0]


@pytest.mark.parametrize("path", ["/cross307/v1/chat/completions", "/cross308/v1/chat/completions", "/openai/deployments/d/chat/completions?api-version=1"])
async def test_a_redirect_to_another_origin_is_followed_without_any_credential(
    servers: tuple[Server, Server], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    home, elsewhere = servers
    with caplog.at_level(logging.WARNING, logger="rate_limited_processor"):
        result = await send(home.url + path)
    assert result.succeeded, result.errors
    assert home.leaked()  # the key and the headers did go where the user sent them...
    assert [seen[0] for seen in elsewhere.seen] == ["/v1/chat/completions"]
    assert elsewhere.leaked() == []  # ...and nothing of them went elsewhere
    assert elsewhere.seen[0][2]["messages"] == chat_request(1)["messages"]  # a 307/308 keeps the POST and its body
    assert "redirects to another origin" in caplog.text and elsewhere.url in caplog.text
    assert KEY not in caplog.text


async def test_the_same_host_under_another_name_is_another_origin(servers: tuple[Server, Server]) -> None:
    home, _ = servers
    result = await send(home.url + "/hostname/v1/chat/completions")
    assert result.succeeded
    followed = [headers for path, headers, _ in home.seen if path == "/v1/chat/completions"]
    assert len(followed) == 1 and "Authorization" not in followed[0] and "X-Gateway-Token" not in followed[0]


async def test_credentials_stripped_once_are_not_restored_by_a_redirect_back(servers: tuple[Server, Server]) -> None:
    home, elsewhere = servers
    result = await send(home.url + "/there-and-back/v1/chat/completions")
    assert result.succeeded
    assert elsewhere.leaked() == []
    back_home = [headers for path, headers, _ in home.seen if path == "/v1/chat/completions"]
    assert len(back_home) == 1 and "Authorization" not in back_home[0]


async def test_a_redirect_within_the_origin_keeps_the_credentials(servers: tuple[Server, Server]) -> None:
    home, elsewhere = servers
    result = await send(home.url + "/same/v1/chat/completions")
    assert result.succeeded and result.response is not None
    assert result.response["choices"][0]["message"]["content"] == "from /v1/chat/completions"
    followed = [headers for path, headers, _ in home.seen if path == "/v1/chat/completions"]
    assert followed[0]["Authorization"] == f"Bearer {KEY}" and followed[0]["X-Gateway-Token"] == EXTRA["X-Gateway-Token"]
    assert elsewhere.seen == []


@pytest.mark.parametrize(
    ("path", "status"),
    [("/moved301/v1/chat/completions", 301), ("/see-other303/v1/chat/completions", 303), ("/ftp/v1/chat/completions", 307)],
)
async def test_a_redirect_a_post_cannot_follow_fails_naming_where_it_pointed(servers: tuple[Server, Server], path: str, status: int) -> None:
    home, elsewhere = servers
    result = await send(home.url + path)
    assert not result.succeeded and result.attempts == 1
    assert result.errors[0].startswith(f"HTTP {status}: redirected to ") and "not followed" in result.errors[0]
    assert elsewhere.seen == []


async def test_a_redirect_loop_ends_after_a_few_hops(servers: tuple[Server, Server]) -> None:
    home, _ = servers
    result = await send(home.url + "/loop/v1/chat/completions")
    assert not result.succeeded and result.errors[0].startswith("HTTP 307: redirected to ")
    assert 2 <= len(home.seen) <= 10  # followed a few times, then given up: not forever
