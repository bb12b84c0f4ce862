"""Where credentials go, and where they must never appear.

`auth_headers` puts the key where each API looks for it. Everything the run writes or logs about an attempt
(error texts, exception messages, tracebacks) passes through a `Scrubber` first, which replaces every
credential it was given with ***. `Headers` prints the names of the headers it holds, never their values.
"""

from __future__ import annotations

from collections.abc import Iterable

from .config import Settings
from .endpoints import is_azure_url

__all__ = ["Headers", "Scrubber", "auth_headers", "scrubber_for", "REDACTED"]

REDACTED = "***"
#: Values shorter than this are not scrubbed: they would mangle ordinary text and are not meaningful secrets.
MIN_SECRET_LENGTH = 4


class Scrubber:
    """Replaces known secret strings with *** in any text."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

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
    if settings.key is not None:
        key = settings.key.reveal()
        if is_azure_url(settings.request_url):
            headers["api-key"] = key
        else:
            headers["Authorization"] = f"Bearer {key}"
    headers.update(settings.extra_headers)
    return headers


def scrubber_for(settings: Settings) -> Scrubber:
    """A scrubber for every credential these settings send: the key and every extra header's value."""
    secrets = [settings.key.reveal()] if settings.key is not None else []
    secrets.extend(settings.extra_headers.values())
    return Scrubber(secrets)
