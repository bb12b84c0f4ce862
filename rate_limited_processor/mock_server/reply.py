"""A finished HTTP answer as a plain value: what the pure parts of the mock hand the aiohttp layer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..base import strict_json

__all__ = ["Reply", "json_reply", "JSON", "HTML"]

JSON = "application/json"
HTML = "text/html"


@dataclass(frozen=True, slots=True)
class Reply:
    """Status, body bytes, content type and headers; `app.py` turns it into an `aiohttp.web.Response`."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)

    def with_headers(self, extra: Mapping[str, str]) -> Reply:
        """The same reply with `extra` headers added (they win over existing ones)."""
        if not extra:
            return self
        return replace(self, headers={**self.headers, **extra})

    def json(self) -> Any:
        """The body decoded, for tests and the stats summary."""
        return json.loads(self.body)


def json_reply(status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Reply:
    """Serialise once, compactly: the mock must answer thousands of requests a second."""
    body = strict_json.dumps(payload)
    return Reply(status, body, JSON, dict(headers or {}))
