"""The one JSON reader for everything from outside: input lines, server answers, rows of a results file.

Python's `json` reads more than JSON, and fails in ways its callers do not expect:

- `NaN`, `Infinity`, and numbers too large for a double (`1e400`, read as infinity) are not JSON. They
  could be neither sent nor written back as JSON.
- An integer of more than 4,300 digits raises a plain ValueError (Python's int-string limit), not a
  JSONDecodeError.
- A value nested deeper than Python's recursion limit (about 1,000 levels) raises RecursionError. One
  nested a little less deep parses, but a later walk of it (serialising, hashing, estimating) from a
  deeper stack may not.
- An escaped half of a UTF-16 pair (`"\\ud800"`) parses, but no UTF-8 text can carry it.

`loads` turns each of these into one `InvalidJSON` whose message says which, so the caller rejects one
line (or one answer) and goes on. Nesting is bounded at `MAX_DEPTH` levels: far above any API body, and
far enough below the recursion limit that everything downstream can walk what was read.

Usage::

    try:
        value = loads(text)
    except InvalidJSON as error:
        print(error.reason)          # "nested deeper than 200 levels", "not valid JSON (...)", ...
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

__all__ = ["InvalidJSON", "loads", "MAX_DEPTH"]

#: The deepest nesting read. An API body nests a few levels (a JSON schema in `response_format` perhaps
#: twenty); Python's recursion limit is about 1,000, and the stack already holds some when a value is
#: serialised or walked later.
MAX_DEPTH = 200
#: How much of an offending number a message quotes.
_MAX_QUOTED = 40
# A JSON escape of a UTF-16 surrogate (either half): only then can a lone one be in the value.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_CONTAINERS = (dict, list)


class InvalidJSON(ValueError):
    """Text that is not strict JSON (`syntax`), or JSON this tool will not carry: too deep, too long a
    number, a number out of range, a lone surrogate. `reason` says which, in words for a user."""

    def __init__(self, reason: str, *, syntax: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.syntax = syntax


def loads(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The value `text` holds, or InvalidJSON saying why it cannot be read (never another exception)."""
    try:
        value = _DECODER.decode(text)
    except InvalidJSON:
        raise
    except json.JSONDecodeError as error:
        raise InvalidJSON(f"not valid JSON ({error.msg} at column {error.colno})", syntax=True) from None
    except RecursionError:
        raise InvalidJSON(f"nested deeper than {max_depth} levels") from None
    except ValueError:  # Python's int-string limit: the one other ValueError the decoder raises
        raise InvalidJSON(f"holds an integer of more than {sys.get_int_max_str_digits()} digits, more than Python reads") from None
    if _may_nest_deeper(text, max_depth) and _deeper_than(value, max_depth):
        raise InvalidJSON(f"nested deeper than {max_depth} levels")
    if ("\\ud" in text or "\\uD" in text) and _SURROGATE_ESCAPE.search(text) is not None and _has_lone_surrogate(value):
        raise InvalidJSON("holds an unpaired UTF-16 surrogate escape (like \\ud800), which cannot be sent or written as UTF-8")
    return value


def _refuse_constant(name: str) -> None:
    raise InvalidJSON(f"{name} is not valid JSON (it can be neither sent nor written back)", syntax=True)


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value:  # inf - inf is nan; any finite value gives 0.0
        quoted = text if len(text) <= _MAX_QUOTED else text[:_MAX_QUOTED] + "…"
        raise InvalidJSON(f"the number {quoted} is too large for JSON (it would be read as infinity)")
    return value


# One decoder, made once: json.loads with hooks would build a new one on every call.
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)


def _may_nest_deeper(text: str, max_depth: int) -> bool:
    """Cheap (two C-speed counts): a value nested `max_depth` deep has at least that many brackets."""
    return len(text) > 2 * max_depth and text.count("[") + text.count("{") > max_depth


def _deeper_than(value: Any, max_depth: int) -> bool:
    """Walks the containers level by level, without recursion (the point is not to recurse)."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        below: list[Any] = []
        for container in level:
            children = container.values() if isinstance(container, dict) else container
            below.extend(child for child in children if isinstance(child, _CONTAINERS))
        level = below
    return False


def _has_lone_surrogate(value: Any) -> bool:
    """Pairs are fine (an emoji); half of one cannot be encoded as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
