"""Repository invariants that every later component relies on."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_no_module_shadows_the_standard_library_operator() -> None:
    offenders = [p for p in ROOT.rglob("operator.py") if ".venv" not in p.parts]
    offenders += [p for p in ROOT.rglob("operator/__init__.py") if ".venv" not in p.parts]
    assert offenders == []
    import operator

    assert hasattr(operator, "itemgetter")


@pytest.mark.parametrize(
    "package", ["llmstream", "llmstream_inference", "llmstream_gateway", "llmstream_operator"]
)
def test_each_package_imports_from_its_component_folder(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(ROOT)


def test_cli_help_lists_the_model_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmstream", "model", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pull-default" in result.stdout
    assert "make-tiny" in result.stdout


def test_cli_does_not_import_torch_to_build_its_parser() -> None:
    code = (
        "import sys; from llmstream.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("component", "others"),
    [
        ("llmstream", ("llmstream_inference", "llmstream_gateway", "llmstream_operator")),
        ("llmstream_operator", ("llmstream_inference", "llmstream_gateway")),
        ("llmstream_gateway", ("llmstream_inference", "llmstream_operator")),
        ("llmstream_inference", ("llmstream_gateway", "llmstream_operator")),
    ],
)
def test_components_share_facts_only_through_the_llmstream_package(
    component: str, others: tuple[str, ...]
) -> None:
    """A fact two components share lives in `llmstream/`; no component imports another."""
    folder = Path(importlib.import_module(component).__file__ or "").parent
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in folder.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.lstrip().startswith(("import ", "from "))
        and any(f" {other}" in line or f"{other}." in line for other in others)
    ]
    assert offenders == []
