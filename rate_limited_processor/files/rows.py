"""The rows a results file holds, and the identity that matches a row to its input line.

A row and the input line it came from have the same 64-bit identity: the hash of the request's id when the
input gives one (a Batch line's custom_id, or metadata.custom_id), else of its body and metadata. A
Batch-output row carries it in its "id". `parse_row` reads either row shape the writer writes (see `resume`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ..base import strict_json
from ..base.models import APIRequest, RejectedLine, RequestResult

_BATCH_ID_PREFIX = "batch_req_"
_BATCH_ID = re.compile(re.escape(_BATCH_ID_PREFIX) + "([0-9a-f]{16})")
#: How a Batch-output row starts, as the writer writes it (json.dumps' default separators).
_BATCH_ROW_START = b'{"id": "' + _BATCH_ID_PREFIX.encode()
_BATCH_ROW_KEYS = frozenset({"id", "custom_id", "response", "error"})
#: Levels a row adds around what it holds: a Batch row's body sits two levels down.
ROW_NESTING = 2


def identity(request: Any, metadata: Any) -> int:
    """The 64-bit content identity of a request with its metadata (as written in an output row)."""
    return int.from_bytes(hashlib.blake2b(strict_json.canonical([request, metadata]), digest_size=8).digest(), "big")


def identity_of_id(custom_id: str) -> int:
    """The identity of a request the input gave an id."""
    return identity("custom_id", custom_id)


def identity_of_item(item: APIRequest | RejectedLine) -> int:
    """The identity of an input item, equal to that of the row the run writes for it."""
    if item.custom_id is not None:
        return identity_of_id(item.custom_id)
    if isinstance(item, RejectedLine):
        return identity(item.content, None)
    return identity(item.body, item.metadata)


def identity_of_result(result: RequestResult) -> int:
    """The identity of a result: that of the input item it came from."""
    if result.custom_id is not None:
        return identity_of_id(result.custom_id)
    return identity(result.request, result.metadata)


def batch_row_id(identity_: int) -> str:
    """A Batch-output row's "id", which carries its identity for a rerun."""
    return f"{_BATCH_ID_PREFIX}{identity_:016x}"


def _could_be_a_torn_row(raw: bytes) -> bool:
    """The start of a row as the writer writes it: a cookbook row, or a Batch-output line."""
    return raw.startswith((b"[", _BATCH_ROW_START)) or _BATCH_ROW_START.startswith(raw)


def _parse_row(raw: bytes) -> tuple[int, bool] | None:
    """A row's (identity, is it a failure), for either output shape; None if it is not a result row.

    A cookbook row is `[request, response-object or list of error strings(, metadata)]`; a Batch-output
    row is an object with "id" ("batch_req_" and 16 hex digits), "custom_id", "response" and "error".
    """
    try:
        row = strict_json.loads(raw, max_depth=strict_json.MAX_DEPTH + ROW_NESTING)
    except strict_json.InvalidJSON:
        return None
    if isinstance(row, list) and len(row) in (2, 3) and _is_outcome(row[1]):
        request, outcome = row[0], row[1]
        metadata = row[2] if len(row) == 3 else None
        custom_id = metadata.get("custom_id") if isinstance(metadata, dict) else None
        row_identity = identity_of_id(custom_id) if isinstance(custom_id, str) else identity(request, metadata)
        return row_identity, isinstance(outcome, list)
    if isinstance(row, dict) and row.keys() >= _BATCH_ROW_KEYS and isinstance(row["id"], str):
        match = _BATCH_ID.fullmatch(row["id"])
        if match is None:
            return None
        response = row["response"]
        status = response.get("status_code") if isinstance(response, dict) else None
        succeeded = isinstance(status, int) and 200 <= status < 300
        return int(match[1], 16), not succeeded
    return None


def _is_outcome(value: Any) -> bool:
    """A response object, or the errors of a failure: a non-empty list of strings."""
    return isinstance(value, dict) or (isinstance(value, list) and bool(value) and all(isinstance(error, str) for error in value))
