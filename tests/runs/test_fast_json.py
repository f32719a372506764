"""``runs.fast_json`` answers exactly as ``json`` does, including where orjson alone would refuse or differ."""

from __future__ import annotations

import json

import pytest

from runs import fast_json

DOCS = [
    '{"payload":"{\\"json\\":{\\"a\\":1}}","options":{"tags":["a","é"],"metadata":{"n":1.5,"z":null}}}',
    '{"big": 123456789012345678901234567890}',  # beyond 64 bits: orjson would read a float
    '{"big": -18446744073709551616, "u64": 18446744073709551615, "i64": -9223372036854775808}',
    '{"k": "12345678901234567890123"}',  # a long run of digits inside a string
    '{"x": NaN, "y": Infinity}',  # literals json accepts (the schema refuses them later)
    '{"s": "\\ud800"}',  # a lone surrogate escape
    '"\\u0000"',
    "[1, 2, 3]",
]


@pytest.mark.parametrize("text", DOCS)
def test_loads_gives_what_json_gives(text):
    expected = json.loads(text)
    got = fast_json.loads(text)
    assert json.dumps(got) == json.dumps(expected)  # NaN compares unequal to itself; its text does not
    assert json.dumps(fast_json.loads(text.encode("utf-8", "surrogatepass"))) == json.dumps(expected)


@pytest.mark.parametrize("text", ["", "{", '{"a":}', "[1,]", "nul"])
def test_malformed_json_raises_json_s_own_error(text):
    with pytest.raises(json.JSONDecodeError) as got:
        fast_json.loads(text)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    assert str(got.value) == str(expected.value)


def test_nesting_beyond_the_recursion_limit_raises_recursion_error_as_json_does():
    with pytest.raises(RecursionError):
        fast_json.loads("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize(
    "value",
    [{"a": [1, "é", None, True, 1.25]}, {"big": 10**30}, {1: "non-str key"}, "\x00", [], {"nested": {"k": "v"}}],
)
def test_dumps_is_json_dumps_compact_and_unescaped(value):
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert fast_json.dumps(value) == expected
    assert fast_json.dumps_bytes(value) == expected.encode()
