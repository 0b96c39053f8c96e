"""The operator configures its pods only through environment variables; each one it sets must
be one the program in that pod reads. A `LLMSTREAM_*` variable is either a flag's variable
(`llmstream.envargs`, read by the CLI's parser) or one of the few read directly."""

from __future__ import annotations

from typing import Any

import pytest
from llmstream_operator import builders
from llmstream_operator.builders import BuildSettings, Owner
from llmstream_operator.spec import parse_spec

from llmstream.cli import build_parser
from llmstream.modelsource import PVC_ROOT_ENV
from llmstream.paths import HOME_ENV
from llmstream.termination import TERMINATION_LOG_ENV

OWNER = Owner(name="qa", namespace="team-a", uid="u-1")
# Read by the code directly, not through a flag.
READ_DIRECTLY = {HOME_ENV, PVC_ROOT_ENV, TERMINATION_LOG_ENV}
SPEC = parse_spec(
    {
        "model": {"source": "pvc://models/llama", "aliases": ["gpt-4o-mini", "llama"]},
        "resources": {"gpus": 0, "requests": {"cpu": "2"}},
        "engine": {"maxBatchSize": 7, "maxWaiting": 9, "defaults": {"temperature": 0.3}},
        "scaling": {"maxPendingStreams": 11, "coldStartTimeoutSeconds": 42},
        "gateway": {"maxStreamsPerConnection": 3, "apiKeySecretRef": {"name": "k", "key": "key"}},
    }
)


def parsed_with(env: list[dict[str, Any]], command: list[str], monkeypatch: Any) -> dict[str, Any]:
    """The CLI's arguments when its pod has `env` (literal values only)."""
    for entry in env:
        if "value" in entry:
            monkeypatch.setenv(entry["name"], str(entry["value"]))
    return vars(build_parser().parse_args(command))


@pytest.mark.parametrize(
    ("env", "command"),
    [
        (builders.inference_env(SPEC, BuildSettings()), ["inference", "serve"]),
        (builders.gateway_env(OWNER, SPEC), ["gateway", "serve"]),
    ],
    ids=["inference", "gateway"],
)
def test_every_variable_the_operator_sets_reaches_the_program(
    env: list[dict[str, Any]], command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = parsed_with(env, command, monkeypatch)
    dests = {f"LLMSTREAM_{dest.upper()}": dest for dest in args}
    unread = []
    for entry in env:
        name = entry["name"]
        if not name.startswith("LLMSTREAM_") or name in READ_DIRECTLY:
            continue
        dest = dests.get(name)
        if dest is None:
            unread.append(name)
        elif "value" in entry:
            value = args[dest]
            if isinstance(value, tuple):  # a comma-separated list
                value = ",".join(value)
            if isinstance(value, bool):
                value = str(value).lower()
            assert str(value) == str(entry["value"]) or float(value) == float(entry["value"]), (
                name,
                value,
                entry["value"],
            )
    assert unread == []


def test_the_spec_values_arrive_as_the_programs_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    inference = parsed_with(builders.inference_env(SPEC, BuildSettings()), ["inference", "serve"],
                            monkeypatch)  # fmt: skip
    gateway = parsed_with(builders.gateway_env(OWNER, SPEC), ["gateway", "serve"], monkeypatch)
    assert (inference["max_batch_size"], inference["max_waiting"]) == (7, 9)
    assert inference["default_temperature"] == 0.3
    assert inference["threads"] == 2
    assert (gateway["max_pending_streams"], gateway["cold_start_timeout"]) == (11, 42.0)
    assert gateway["max_streams_per_connection"] == 3
    assert gateway["backend_capacity"] == 7 + 9
    assert gateway["model_names"] == ("llama", "gpt-4o-mini")
    assert inference["model_aliases"] == ("gpt-4o-mini", "llama")
