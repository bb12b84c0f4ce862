"""The one JSON reader for everything from outside (input lines, server answers, rows of a results file),
and the one encoder for what the tool writes and sends.

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

Speed. Every request's line, answer and row goes through here, so the work is done by orjson (5 to 20
times faster than `json`; on a 1,536-float embedding, about 50 µs against 1 ms). orjson refuses by itself
what is refused here (NaN, Infinity, 1e400, lone surrogates, invalid UTF-8), and reads what it accepts
exactly as `json` does, with one exception: an integer beyond 64 bits, which it reads as a float. So a
text that holds a run of 19 or more digits outside a fraction is read by `json`, as is every text orjson
refuses: that slow path alone decides what is wrong, so the messages are the same as they always were.
`dumps` and `canonical` encode with orjson and fall back to `json` where orjson refuses (integers beyond
64 bits, keys that are not strings) or would spell a number differently (`canonical` must give the bytes
it always has: they are hashed).

Usage::

    try:
        value = loads(text)          # str or bytes
    except InvalidJSON as error:
        print(error.reason)          # "nested deeper than 200 levels", "not valid JSON (...)", ...
    dumps({"a": 1})                  # b'{"a":1}'
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["InvalidJSON", "loads", "dumps", "canonical", "unsendable", "MAX_DEPTH"]

#: The deepest nesting read. An API body nests a few levels (a JSON schema in `response_format` perhaps
#: twenty); Python's recursion limit is about 1,000, and the stack already holds some when a value is
#: serialised or walked later.
MAX_DEPTH = 200
#: How much of an offending number a message quotes.
_MAX_QUOTED = 40
# A JSON escape of a UTF-16 surrogate (either half): only then can a lone one be in the value.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_CONTAINERS = (dict, list, tuple)  # tuples only in values built in Python (`unsendable`); JSON reads none

# The shape of a text, byte for byte: a digit becomes "0"; what stands before a fraction's or an exponent's
# digits (".", "e", "E") becomes "."; anything else " ". So an integer's digits follow a " " (or start the
# text), and 19 of them in a row may be more than the 64 bits orjson reads exactly.
_SHAPE = bytes(ord("0") if byte in b"0123456789" else ord(".") if byte in b".eE" else ord(" ") for byte in range(256))
_NINETEEN_DIGITS = b"0" * 19
_BEFORE_AN_INTEGER = ord(" ")


class InvalidJSON(ValueError):
    """Text that is not strict JSON (`syntax`), or JSON this tool will not carry: too deep, too long a
    number, a number out of range, a lone surrogate. `reason` says which, in words for a user."""

    def __init__(self, reason: str, *, syntax: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.syntax = syntax


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The value `text` holds, or InvalidJSON saying why it cannot be read (never another exception).

    Bytes must be UTF-8: bytes that are not are InvalidJSON ("not valid UTF-8 ...").
    """
    # Every line and answer comes through here: orjson first, unless the text may hold what it reads otherwise.
    if isinstance(text, bytes):
        data: bytes | None = text
    else:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a str holding half a surrogate pair: only the strict reader takes it as it is
            data = None
    if data is not None and not _may_hold_a_long_integer(data.translate(_SHAPE)):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # the strict reader below says what is wrong
        else:
            if _may_nest_deeper(data, max_depth) and _deeper_than(value, max_depth):
                raise InvalidJSON(f"nested deeper than {max_depth} levels")
            return value
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidJSON(f"not valid UTF-8 ({error.reason} at byte {error.start})") from None
    return _strict_loads(text, max_depth)


def dumps(value: Any, *, default: Callable[[Any], Any] | None = None) -> bytes:
    """`value` as compact JSON in UTF-8, as rows are written and requests sent (`default` as json's)."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, a key that is not a string
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default).encode()


def canonical(value: Any) -> bytes:
    """The canonical text of a value read from JSON, byte for byte what
    `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()` gives.

    A request's identity is the hash of this text, and Batch rows of earlier runs carry such hashes: it must
    never change. orjson spells every value as json does but floats with an exponent from -5 to -9
    (`0.00001` for `1e-05`, `1e-7` for `1e-07`); a text where one could be is made by json instead.
    """
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        pass
    else:
        if b"e-" not in text and b".0000" not in text:
            return text
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def unsendable(value: Any, *, max_depth: int = MAX_DEPTH) -> str | None:
    """Why a value built in Python (a library caller's request, not read by `loads`) cannot go as the JSON it
    stands for, or None: nested deeper than `max_depth`, a NaN or infinity (orjson would send null), a key
    that is not a string or a number, half a surrogate pair, or a type JSON has no word for. (A key that is a
    number is sent as its string, as json writes it: `logit_bias` built with token ids.)

    The depth is walked first, in Python: orjson bounds the nesting of dicts and lists but not of tuples, and a
    tuple nested a few thousand deep crashes the interpreter inside it (orjson 3.13). Then one orjson encoding
    tells most values apart at once; only one that fails, or whose text holds a null (a NaN's spelling), is
    walked to find out why.
    """
    if _deeper_than(value, max_depth):
        return f"is nested deeper than {max_depth} levels"
    try:
        text = orjson.dumps(value)
    except TypeError:
        text = None
    if text is not None and b"null" not in text:
        return None
    return _why_unsendable(value)


def _why_unsendable(value: Any) -> str | None:
    """The walk behind `unsendable` (the depth already known to be bounded): every key and every scalar, level
    by level."""
    level = [value]
    while level:
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                for key in item:  # json spells a number, true, false or null as a key's string, as the caller meant
                    if not (isinstance(key, (str, int)) or key is None or (isinstance(key, float) and key - key == 0)):
                        return f"has a key JSON cannot spell ({type(key).__name__} {key!r:.40})"
                below.extend(item.values())
            elif isinstance(item, (list, tuple)):
                below.extend(item)
            else:
                problem = _unsendable_scalar(item)
                if problem is not None:
                    return problem
        level = below
    return None


def _unsendable_scalar(value: Any) -> str | None:
    if value is None or isinstance(value, (bool, int)):
        return None
    if isinstance(value, float):
        return None if value - value == 0 else f"holds {value!r}, which is not JSON (it would be sent as null)"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "holds half of a UTF-16 surrogate pair, which cannot be sent as UTF-8"
        return None
    return f"holds a {type(value).__name__}, which JSON has no value for"


def _may_hold_a_long_integer(shape: bytes) -> bool:
    """Could an integer of 19 or more digits (beyond orjson's 64 bits) be in the text of this shape: 19 digits
    in a row, at the start or after a " " (after a "." they are a fraction's or an exponent's)?

    The search is for the digits alone: it skips fast over the rest of the shape, where a search for
    " " + digits would step byte by byte (every byte of a shape is one of its three).
    """
    at = shape.find(_NINETEEN_DIGITS)
    while at >= 0:
        if at == 0 or shape[at - 1] == _BEFORE_AN_INTEGER:
            return True
        at = shape.find(_NINETEEN_DIGITS, at + len(_NINETEEN_DIGITS))  # still in that fraction's run of digits
    return False


def _strict_loads(text: str, max_depth: int) -> Any:
    """Python's reader, hooked to refuse what is not JSON, with each failure turned into its reason."""
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


def _may_nest_deeper(text: str | bytes, max_depth: int) -> bool:
    """Cheap (two C-speed counts): a value nested `max_depth` deep has at least that many brackets."""
    if len(text) <= 2 * max_depth:
        return False
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") > max_depth
    return text.count("[") + text.count("{") > max_depth


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
            for child in container.values() if isinstance(container, dict) else container:  # a loop: no generator per container
                if isinstance(child, _CONTAINERS):
                    below.append(child)
        level = below
    return False


def _has_lone_surrogate(value: Any) -> bool:
    """Pairs are fine (an emoji); half of one cannot be encoded as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
