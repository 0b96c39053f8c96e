"""An invalid LLMEndpoint spec is refused with one line naming every bad field, in the user's
own spelling (the CRD's camelCase, under `spec.`), rendered the same way as the servers'
request errors (`llmstream.wire.describe_validation_error`)."""

from __future__ import annotations

from typing import Any

import pytest
from llmstream_operator.spec import SpecError, parse_spec

SOURCE = {"source": "builtin://smollm2-135m-instruct"}
CASES: dict[str, tuple[Any, str]] = {
    "a number over its bound, with what was given": (
        {"model": SOURCE, "engine": {"maxBatchSize": 5000}},
        "spec.engine.maxBatchSize: Input should be less than or equal to 1024 (got 5000)",
    ),
    "a missing field and a misspelled one, both named": (
        {"modell": SOURCE},
        "spec.model: Field required; spec.modell: unknown field",
    ),
    "no spec at all": (None, "spec.model: Field required"),
    "a spec that is not a mapping": ([], "spec: Input should be a valid dictionary"),
    "a rule across fields": (
        {"model": SOURCE, "engine": {"defaults": {"maxNewTokens": 4096}}},
        "spec.engine: defaults.maxNewTokens must not exceed maxNewTokensLimit",
    ),
}


@pytest.mark.parametrize(("raw", "expected"), CASES.values(), ids=CASES.keys())
def test_spec_errors_name_the_fields_as_the_user_wrote_them(raw: Any, expected: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(raw)
    assert str(refused.value).startswith(expected)
