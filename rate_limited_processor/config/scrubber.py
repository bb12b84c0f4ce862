"""Scrubbing: every credential a run was given replaced with *** in any text it writes or logs.

A `Scrubber` replaces each secret it was given, and also any `LEAKED_RUN` characters in a row of one: a server
that echoes a key cut short, or from its tenth character on, or with one character changed, must not leak the
rest of it. It imports nothing of the package, so `settings` (reading an accounts file) and `credentials` share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["Scrubber", "REDACTED", "LEAKED_RUN", "MIN_SECRET_LENGTH"]

REDACTED = "***"
#: Values shorter than this are not scrubbed: they would mangle ordinary text and are not meaningful secrets.
MIN_SECRET_LENGTH = 4
#: A secret's pieces searched for, of this length, starting every `_FRAGMENT_STEP` characters (and at its end):
#: any run of `LEAKED_RUN` characters of it holds a whole piece, and is found, however it is aligned.
_FRAGMENT_LENGTH = 16
_FRAGMENT_STEP = 8
LEAKED_RUN = _FRAGMENT_LENGTH + _FRAGMENT_STEP - 1


class Scrubber:
    """Replaces known secret strings with *** in any text, and in every string of a decoded JSON value."""

    __slots__ = ("_secrets", "_needles", "_fragments", "_escapes", "_longest")

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        #: (a secret, where a piece of it starts, the piece), for each secret long enough to leak in part.
        self._fragments = [
            (secret, start, secret[start : start + _FRAGMENT_LENGTH]) for secret in self._secrets for start in _fragment_starts(len(secret))
        ]
        #: What is searched for to tell whether a text may hold a secret: a short secret whole, a long one's pieces.
        self._needles = [secret for secret in self._secrets if len(secret) < _FRAGMENT_LENGTH] + [piece for _, _, piece in self._fragments]
        # What betrays a secret in JSON text: the secret itself, or an escape that could spell part of one
        # (\uXXXX any character, the others only their own). None at all when there is no secret.
        escapes = ("\\u", *(escape for char, escape in _JSON_ESCAPES.items() if any(char in secret for secret in self._secrets)))
        self._escapes = escapes if self._secrets else ()
        self._longest = len(self._secrets[0]) if self._secrets else 0

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for secret, start, piece in self._fragments:
            if piece in text:
                text = _redact_runs(text, secret, start, piece)
        return text

    def __repr__(self) -> str:
        return f"Scrubber({len(self._secrets)} secrets)"

    def may_hide_a_secret(self, json_text: str) -> bool:
        """Could a secret be in this JSON text, spelled out or behind escapes ("sk-\\/...", "\\u0073k-...")?

        A few substring searches, so a body with neither a secret nor such an escape costs next to nothing:
        every escape starts with a backslash, and one search for that (a memchr) rules them all out at once.
        """
        for needle in self._needles:  # noqa: SIM110 (a plain loop: this runs for every answer, and any() costs a generator)
            if needle in json_text:
                return True
        if not self._escapes or "\\" not in json_text:
            return False
        for escape in self._escapes:  # noqa: SIM110
            if escape in json_text:
                return True
        return False

    def scrub_decoded(self, value: Any, json_text: str) -> Any:
        """`value` (decoded from `json_text`) with every secret replaced in every string, dict keys too.

        A server that echoes the request's headers with escapes (`\\/`, `\\u0073`) hides the key from a
        scrub of the raw text; once decoded it is plain. The value is walked only when `json_text` may hide a
        secret, so an ordinary answer is returned as it is. Everything a run writes of a body goes through here.
        """
        if not self.may_hide_a_secret(json_text):
            return value
        return self._walk(value)

    def scrub_json_text(self, json_text: str, limit: int) -> str:
        """The start of a JSON text, for messages: at most `limit` characters, its escapes decoded, secrets replaced."""
        # Decode a little more than `limit`: an escaped secret is up to six times longer, and must not be cut in two.
        head = _JSON_ESCAPE.sub(_unescape, json_text[: limit + 6 * self._longest])
        return self(head)[:limit]

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(key) if isinstance(key, str) else key: self._walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._walk(item) for item in value]
        return value


def _fragment_starts(length: int) -> list[int]:
    """Where the pieces of a secret of this length start: every step, and the last piece flush with its end."""
    if length < _FRAGMENT_LENGTH:
        return []
    starts = list(range(0, length - _FRAGMENT_LENGTH + 1, _FRAGMENT_STEP))
    if starts[-1] != length - _FRAGMENT_LENGTH:
        starts.append(length - _FRAGMENT_LENGTH)
    return starts


def _redact_runs(text: str, secret: str, start: int, piece: str) -> str:
    """`text` with each run of `secret` around an occurrence of `piece` (which starts at `start` in it) replaced,
    the run grown both ways as far as the text goes on spelling the secret."""
    found = text.find(piece)
    while found != -1:
        left, right = found, found + len(piece)
        at_left, at_right = start, start + len(piece)
        while left > 0 and at_left > 0 and text[left - 1] == secret[at_left - 1]:
            left, at_left = left - 1, at_left - 1
        while right < len(text) and at_right < len(secret) and text[right] == secret[at_right]:
            right, at_right = right + 1, at_right + 1
        text = text[:left] + REDACTED + text[right:]
        found = text.find(piece, left + len(REDACTED))
    return text


_JSON_ESCAPES = {"/": "\\/", '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPED = {escape[1]: char for char, escape in _JSON_ESCAPES.items()}
_JSON_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|([\"\\/bfnrt]))")


def _unescape(match: re.Match[str]) -> str:
    if match[1] is None:
        return _UNESCAPED[match[2]]
    code = int(match[1], 16)
    return match[0] if 0xD800 <= code <= 0xDFFF else chr(code)  # half a surrogate pair stays escaped: it cannot be printed
