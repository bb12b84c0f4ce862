"""One HTTP attempt, turned into an `HTTPOutcome` that `retry_policy.classify` can judge.

This is the only module that talks to the network. It never raises for what the server or the network
did: timeouts, resets and odd bodies all become outcomes. Every piece of text that leaves it is scrubbed
of the credentials it was given, because aiohttp's exceptions can carry request details.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from .config import Settings
from .endpoints import is_azure_url
from .retry_policy import HTTPOutcome

__all__ = ["Headers", "Scrubber", "auth_headers", "new_session", "post_json", "scrubber_for"]

#: Error bodies are kept for messages only; a gateway's HTML page need not be kept whole.
MAX_ERROR_TEXT = 2_000
REDACTED = "***"


class Scrubber:
    """Replaces known secret strings with *** in any text."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole. Very short values would
        # mangle ordinary text and are not meaningful secrets.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def __repr__(self) -> str:
        return f"Scrubber({len(self._secrets)} secrets)"


class Headers(dict[str, str]):
    """Request headers whose repr names the headers but never shows their values (they hold the key)."""

    def __repr__(self) -> str:
        return f"Headers({', '.join(self)})"


def auth_headers(settings: Settings) -> Headers:
    """The headers every request carries: the key in the form the server expects, plus the user's extras."""
    headers = Headers()
    if settings.api_key:
        key = settings.api_key.reveal()  # type: ignore[union-attr]
        if is_azure_url(settings.request_url):
            headers["api-key"] = key
        else:
            headers["Authorization"] = f"Bearer {key}"
    headers.update(settings.extra_headers)
    return headers


def scrubber_for(settings: Settings) -> Scrubber:
    secrets = [settings.api_key.reveal()] if settings.api_key else []  # type: ignore[union-attr]
    secrets.extend(settings.extra_headers.values())
    return Scrubber(secrets)


def new_session(settings: Settings) -> aiohttp.ClientSession:
    """A session sized for the run: one connection per request in flight, no per-host cap."""
    connector = aiohttp.TCPConnector(limit=settings.max_in_flight, limit_per_host=0)
    return aiohttp.ClientSession(connector=connector, raise_for_status=False)


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: Mapping[str, Any],
    *,
    headers: Mapping[str, str],
    timeout: float,
    scrub: Scrubber,
) -> HTTPOutcome:
    """POST `body` once. What the network or the server does comes back as an outcome; only a local
    mistake (say, a body that cannot be encoded) raises."""
    try:
        async with session.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            raw = await response.read()
            status = response.status
            response_headers = {name.lower(): value for name, value in response.headers.items()}
    except asyncio.TimeoutError:
        return HTTPOutcome(status=None, exception=f"TimeoutError: no complete response within {timeout:g}s")
    except aiohttp.ClientError as error:
        return HTTPOutcome(status=None, exception=scrub(f"{type(error).__name__}: {error}"))
    except OSError as error:  # sockets can fail below aiohttp's own exception types
        return HTTPOutcome(status=None, exception=scrub(f"{type(error).__name__}: {error}"))
    text = raw.decode("utf-8", errors="replace")
    parsed = _json_or_none(text)
    if 200 <= status < 300 and isinstance(parsed, dict):
        return HTTPOutcome(status=status, headers=response_headers, body=parsed)
    # Anything else ends up in messages. Scrub before parsing or cutting: a page that echoes a request
    # header must not leak the key, whole or in part.
    text = scrub(text)
    return HTTPOutcome(status=status, headers=response_headers, body=_json_or_none(text), text=text[:MAX_ERROR_TEXT])


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
