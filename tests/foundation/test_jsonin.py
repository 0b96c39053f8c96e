"""Client JSON is parsed so that no input crashes a server: llmstream.jsonin."""

from __future__ import annotations

import pytest

from llmstream import jsonin


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{nope", "not valid JSON (Expecting property name"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 32 levels"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "nested more than 32 levels deep (at $.a.a."),
        (b'{"prompt": "hi \\ud800 there"}', "$.prompt holds a lone UTF-16 surrogate ('\\ud800')"),
        (b'{"id\\udfff": 1}', "lone UTF-16 surrogate"),
        (b'{"messages": [{"content": "\\udc80"}]}', "$.messages[0].content holds a lone"),
    ],
)
def test_input_that_would_break_a_server_is_refused_naming_why(raw: bytes, words: str) -> None:
    with pytest.raises(jsonin.JsonInputError) as refused:
        jsonin.loads(raw)
    assert words in str(refused.value)


def test_ordinary_json_passes_unchanged() -> None:
    body = '{"prompt": "Grüße 😀 \\ud83d\\ude00", "params": {"seed": 7, "top_p": 0.5}}'
    assert jsonin.loads(body) == {
        "prompt": "Grüße 😀 😀",
        "params": {"seed": 7, "top_p": 0.5},
    }
    assert jsonin.loads(b'{"a":' * 31 + b"1" + b"}" * 31) is not None  # 32 levels: allowed
