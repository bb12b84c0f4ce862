"""Where credentials go, and where they must never appear.

`auth_headers` puts the key where each API looks for it. Everything the run writes or logs about an attempt
(error texts, exception messages, tracebacks) passes through a `Scrubber` first, which replaces every
credential it was given with ***, and also any `LEAKED_RUN` characters in a row of one: a server that
echoes a key cut short, or from its tenth character on, or with one character changed, must not leak the
rest of it. `Headers` prints the names of the headers it holds, never their values.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..providers.registry import auth_headers_for, former_name
from .scrubber import LEAKED_RUN, REDACTED, Scrubber
from .settings import Secret, Settings

__all__ = ["Headers", "Scrubber", "auth_headers", "headers_for", "scrubber_for", "REDACTED", "LEAKED_RUN"]


class Headers(dict[str, str]):
    """Request headers whose repr names the headers but never shows their values (they hold the key)."""

    def __repr__(self) -> str:
        return f"Headers({', '.join(self)})"


def auth_headers(settings: Settings) -> Headers:
    """The headers every request carries: the key in the form the server expects, plus the user's extras."""
    return headers_for(settings.request_url, settings.key, settings.extra_headers)


def headers_for(request_url: str, key: Secret | None, extra: Mapping[str, str]) -> Headers:
    """The key where the API at `request_url` looks for it, its version header where it wants one, and `extra`."""
    headers = Headers(auth_headers_for(request_url, key.reveal() if key is not None else None))
    headers.update(extra)
    return headers


def scrubber_for(settings: Settings) -> Scrubber:
    """A scrubber for every credential these settings send: every account's key, and every extra header's value."""
    secrets = [settings.key.reveal()] if settings.key is not None else []
    secrets.extend(settings.extra_headers.values())
    for account in settings.accounts:
        if account.key is not None:
            secrets.append(account.key.reveal())
        secrets.extend(account.headers.values())
    return Scrubber(secrets)


def __getattr__(name: str) -> object:
    """Names earlier releases had here that are a provider's now (`ANTHROPIC_VERSION`)."""
    return former_name(__name__, name)
