"""Model source strings: every accepted form and every way to get one wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmstream_inference.models.sources import resolve_source

from llmstream.modelsource import ModelSource, ModelSourceError, parse_source, served_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("builtin://smollm2-135m-instruct", ModelSource("builtin", "smollm2-135m-instruct")),
        ("hf://HuggingFaceTB/SmolLM2-360M", ModelSource("hf", "HuggingFaceTB/SmolLM2-360M")),
        ("hf://org/name@v1.0", ModelSource("hf", "org/name", revision="v1.0")),
        ("pvc://models/llama/8b", ModelSource("pvc", "models", path="llama/8b")),
        ("pvc://models", ModelSource("pvc", "models", path="")),
        ("file:///srv/models/x", ModelSource("file", "/srv/models/x")),
        ("/srv/models/x", ModelSource("file", "/srv/models/x")),
        ("relative/dir", ModelSource("file", "relative/dir")),
        ("  hf://org/name  ", ModelSource("hf", "org/name")),
    ],
)
def test_accepted_forms_parse(text: str, expected: ModelSource) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty model source"),
        ("   ", "empty model source"),
        ("s3://bucket/model", "unknown model source scheme 's3'"),
        ("builtin://gpt-5", "unknown builtin model"),
        ("hf://just-a-name", "invalid Hugging Face source"),
        ("hf://org/name@", "invalid Hugging Face source"),
        ("hf://org/name/extra", "invalid Hugging Face source"),
        ("pvc://Bad_Claim/x", "invalid PVC source"),
        ("pvc:///x", "invalid PVC source"),
        ("pvc://claim/../etc", "'..' is not allowed"),
        ("file://relative", "expected file:///absolute/path"),
    ],
)
def test_bad_sources_are_refused_with_a_message_naming_them(text: str, message: str) -> None:
    with pytest.raises(ModelSourceError) as info:
        parse_source(text)
    assert message in str(info.value)
    if text.strip():
        assert text.strip() in str(info.value)


def test_unknown_scheme_lists_the_accepted_forms() -> None:
    with pytest.raises(ModelSourceError) as info:
        parse_source("ftp://x/y")
    for form in ("builtin://", "hf://", "pvc://", "file://"):
        assert form in str(info.value)


def test_sources_print_back_as_written() -> None:
    for text in ("builtin://smollm2-135m-instruct", "hf://org/name@rev", "pvc://c/a/b"):
        assert str(parse_source(text)) == text


def _fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_plain_path_and_file_url_resolve_to_the_folder(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "m")
    assert resolve_source(str(model)) == model
    assert resolve_source(f"file://{model}") == model


def test_missing_path_is_an_error_naming_the_source(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_source(str(tmp_path / "empty"))


def test_pvc_resolves_under_the_mount_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSTREAM_PVC_ROOT", str(tmp_path))
    model = _fake_model(tmp_path / "claim" / "llama")
    assert resolve_source("pvc://claim/llama") == model


def test_unmounted_pvc_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMSTREAM_PVC_ROOT", str(tmp_path))
    with pytest.raises(ModelSourceError, match="LLMSTREAM_PVC_ROOT"):
        resolve_source("pvc://claim/llama")


def test_unprovisioned_builtin_says_how_to_provision(isolated_home: Path) -> None:
    with pytest.raises(ModelSourceError, match="pull-default"):
        resolve_source("builtin://smollm2-135m-instruct")


def test_builtin_resolves_into_the_cache(isolated_home: Path) -> None:
    model = _fake_model(isolated_home / "models" / "smollm2-135m-instruct")
    assert resolve_source("builtin://smollm2-135m-instruct") == model


def test_hf_source_offline_explains_how_to_preseed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as info:
        resolve_source("hf://org/name")
    text = str(info.value)
    assert "hf://org/name" in text
    assert "hf download org/name" in text
    assert "file:///" in text


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("builtin://smollm2-135m-instruct", "smollm2-135m-instruct"),
        ("hf://HuggingFaceTB/SmolLM2-360M-Instruct@main", "SmolLM2-360M-Instruct"),
        ("pvc://models/llama-3/8b-instruct", "8b-instruct"),
        ("pvc://models", "models"),
        ("file:///srv/models/qwen2/", "qwen2"),
        ("/srv/models/qwen2", "qwen2"),
    ],
)
def test_the_served_name_is_the_last_part_of_the_model_s_own_name(source: str, name: str) -> None:
    # The operator tells the gateway this name; the inference server reports it.
    assert served_name(parse_source(source)) == name
