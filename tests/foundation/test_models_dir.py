"""`models_dir()`: $LLMSTREAM_MODELS_DIR (a baked, read-only folder in the inference image)
wins over $LLMSTREAM_HOME/models."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmstream.paths import models_dir


def test_models_live_under_llmstream_home_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LLMSTREAM_MODELS_DIR", raising=False)
    monkeypatch.setenv("LLMSTREAM_HOME", str(tmp_path))
    assert models_dir() == tmp_path / "models"


def test_llmstream_models_dir_overrides_the_home_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLMSTREAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMSTREAM_MODELS_DIR", str(tmp_path / "baked"))
    assert models_dir() == tmp_path / "baked"


def test_builtin_model_is_found_in_the_baked_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmstream_inference.models.default import NAME, pull_default

    baked = tmp_path / "baked" / NAME
    baked.mkdir(parents=True)
    (baked / "config.json").write_text("{}")
    (baked / "llmstream-model.json").write_text("{}")
    monkeypatch.setenv("LLMSTREAM_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("LLMSTREAM_MODELS_DIR", str(tmp_path / "baked"))
    assert pull_default() == baked
    assert not (tmp_path / "empty-cache").exists()
