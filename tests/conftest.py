"""Fixtures shared by every test tier, and the guard that keeps test traffic on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

# Every run fails when the test process sends traffic off this machine (tests/netguard.py).
pytest_plugins = ["netguard"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deterministic tiny random-weight model, built once per test session."""
    from llmstream_inference.models.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded default model (SmolLM2-135M-Instruct) from the shared cache."""
    from llmstream_inference.models.default import pull_default

    return pull_default()


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point LLMSTREAM_HOME at an empty folder for the test."""
    monkeypatch.setenv("LLMSTREAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
