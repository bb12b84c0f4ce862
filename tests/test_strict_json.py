"""The one JSON reader and encoder: orjson's speed, with json's exact values and this tool's rejections.

orjson reads an integer beyond 64 bits as a float and spells some floats unlike json; these tests pin the
fallbacks that keep both invisible, and check every rejection says the same whichever reader saw it first.
"""

from __future__ import annotations

import json
import random
import struct

import pytest

from rate_limited_processor.base import strict_json
from rate_limited_processor.base.strict_json import InvalidJSON, canonical, dumps, loads, unsendable


@pytest.mark.parametrize(
    "text",
    [
        "18446744073709551616",  # 2**64: one past what orjson reads as an integer
        "-9223372036854775809",  # one below the smallest 64-bit integer
        '{"seed": 123456789012345678901234567890}',
        '[1, -99999999999999999999, {"a": [18446744073709551616]}]',
        '{"n": ' + "7" * 4_000 + "}",
    ],
)
def test_integers_beyond_64_bits_are_read_exactly_not_as_floats(text: str) -> None:
    expected = json.loads(text)
    for given in (text, text.encode()):
        value = loads(given)
        assert value == expected and repr(value) == repr(expected)


def test_floats_and_64_bit_integers_are_the_values_json_reads() -> None:
    rng = random.Random(12)
    floats = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(2_000)]
    numbers = [f for f in floats if f - f == 0] + [5e-324, 2.2250738585072011e-308, 0.1, -0.0, 1e-400, 2**63, 2**64 - 1, -(2**63)]
    text = json.dumps(numbers)
    assert repr(loads(text.encode())) == repr(json.loads(text))
    assert repr(loads("0.1000000000000000055511151231257827021181583404541015625")) == "0.1"


# text -> what the reason must say; the fast reader refuses some of these and accepts others (201 levels).
REJECTED = {
    '{"t": NaN}': "NaN is not valid JSON",
    '{"t": -Infinity}': "-Infinity is not valid JSON",
    '{"t": 1e400}': "the number 1e400 is too large for JSON",
    '{"t": ' + "9" * 400 + ".5}": "is too large for JSON",
    '{"n": ' + "7" * 5_000 + "}": "more than 4300 digits",
    "[" * 201 + "]" * 201: "nested deeper than 200 levels",
    '{"a": ' * 201 + "1" + "}" * 201: "nested deeper than 200 levels",
    "[" * 5_000 + "]" * 5_000: "nested deeper than 200 levels",
    '{"s": "a\\ud800b"}': "unpaired UTF-16 surrogate",
    '["\\udc00\\ud800"]': "unpaired UTF-16 surrogate",
    '{"a": 1,}': "not valid JSON",
    "": "not valid JSON",
}


@pytest.mark.parametrize("text", REJECTED, ids=lambda text: text[:24])
def test_every_rejection_gives_its_reason_whether_str_or_bytes(text: str) -> None:
    for given in (text, text.encode()):
        with pytest.raises(InvalidJSON, match=REJECTED[text]):
            loads(given)


def test_the_depth_bound_can_be_raised_for_rows_and_200_levels_are_fine() -> None:
    assert loads("[" * 200 + "]" * 200) is not None
    assert loads("[" * 202 + "]" * 202, max_depth=202) is not None


def test_bytes_that_are_not_utf8_are_refused_naming_the_byte() -> None:
    with pytest.raises(InvalidJSON, match=r"not valid UTF-8 \(invalid start byte at byte 9\)"):
        loads(b'{"text": \xff"}')
    assert loads('{"text": "h\u00e9"}'.encode()) == {"text": "h\u00e9"}


#: Values whose canonical text orjson and json could spell differently: floats with every kind of exponent,
#: escapes, keys beyond ASCII (sorted by code point), integers beyond 64 bits.
TRICKY = [
    [1e-05, 1.5e-06, -2.5e-07, 8.878126653401275e-06, 9.99e-09, 1e-10, 0.0001, 1e16, 1.5e300, -0.0, 0.1],
    {"z": 1, "é": 2, "a": {"\U0001f600": 3, "b": [0.00001]}, "\u2028": "\x00\x1f\x7f\"\\/\n\t"},
    ["custom_id", "id with \n a newline and \u00e9"],
    {"seed": 2**64, "n": -(2**70)},
    [{"model": "gpt-4", "messages": [{"role": "user", "content": "re-run e-mail .0000 1.00001"}]}, {"id": 7}],
]


@pytest.mark.parametrize("value", TRICKY, ids=range(len(TRICKY)))
def test_canonical_text_is_byte_for_byte_what_json_gives_so_identities_never_change(value: object) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical(value) == expected


def test_canonical_text_matches_json_on_random_floats_too() -> None:
    rng = random.Random(3)
    values = [rng.uniform(-1, 1) * 10 ** rng.randint(-12, 20) for _ in range(5_000)]
    for value in values:
        assert canonical([value]) == json.dumps([value], separators=(",", ":")).encode()


def test_dumps_is_compact_utf8_and_falls_back_to_json_for_what_orjson_refuses() -> None:
    assert dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    assert json.loads(dumps({"big": 2**64})) == {"big": 2**64}
    assert json.loads(dumps({1: "x"})) == {"1": "x"}  # json turns such keys into strings; orjson refuses them
    assert json.loads(dumps({"odd": {1, 2}} | {"big": 2**65}, default=str)) == {"odd": "{1, 2}", "big": 2**65}
    with pytest.raises(TypeError):
        dumps({"odd": object()})


def test_the_shape_check_sends_only_long_integers_to_the_slow_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    long_integers = [
        "[12345678901234567890]", "12345678901234567890", '{"a":-1234567890123456789}', "[1, 1234567890123456789012]",
        "[0.1234567890123456789012345678901234567890123, 123456789012345678901234]",  # a long fraction first
    ]
    assert all(loads(text) == json.loads(text) for text in long_integers)  # exact: orjson would read floats
    fractions = ["[0.00012299999641254544]", "[1.1234567890123456789e-05]", '"short 123"', "[0.1234567890123456789012345678901234567890123]"]
    monkeypatch.setattr(strict_json, "_strict_loads", None)  # the slow reader is not called for these
    assert [loads(text) for text in fractions] == [[0.00012299999641254544], [1.1234567890123456789e-05], "short 123", [0.12345678901234568]]
    with pytest.raises(TypeError):
        loads(long_integers[0])


def _nested(levels: int) -> dict[str, object]:
    value: dict[str, object] = {}
    inner = value
    for _ in range(levels - 1):
        inner["x"] = inner = {}
    return value


def _nested_tuple(levels: int) -> tuple[object, ...]:
    value: tuple[object, ...] = ()
    for _ in range(levels - 1):
        value = (value,)
    return value


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (_nested(201), "is nested deeper than 200 levels"),
        (_nested(100_000), "is nested deeper than 200 levels"),
        ({"tools": [_nested_tuple(100_000)]}, "is nested deeper than 200 levels"),  # orjson itself crashes on this
        ({"temperature": float("nan")}, "holds nan, which is not JSON"),
        ({"a": [1.0, float("-inf")]}, "holds -inf"),
        ({(1, 2): "pair"}, "has a key JSON cannot spell (tuple (1, 2))"),
        ({"a": "half \ud800 a pair"}, "half of a UTF-16 surrogate pair"),
        ({"a": {1, 2}}, "holds a set, which JSON has no value for"),
    ],
    ids=["201 levels", "100,000 levels", "100,000 tuples", "NaN", "infinity", "tuple key", "lone surrogate", "a set"],
)
def test_a_value_built_in_python_that_json_cannot_carry_says_why(value: object, says: str) -> None:
    problem = unsendable(value)
    assert problem is not None and says in problem


@pytest.mark.parametrize(
    "value",
    [_nested(200), {"a": None, "b": [None, 1.5, 10**30, True, "ü"]}, ("a", "tuple"), [], {"logit_bias": {50256: -100}}],
    ids=["200 levels", "nulls", "tuple", "empty", "token ids as keys"],
)
def test_a_value_json_can_carry_is_sendable(value: object) -> None:
    assert unsendable(value) is None
