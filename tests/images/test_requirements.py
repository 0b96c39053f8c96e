"""The requirement lists the Dockerfiles install before copying any source."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tools.images import plan, requirements

SCRIPT = plan.ROOT / "tools" / "images" / "requirements.py"
PROJECT: dict[str, Any] = {
    "project": {
        "dependencies": ["pydantic==2.0"],
        "optional-dependencies": {
            "gateway": ["aiohttp==3.0"],
            "all": ["llmstream[gateway]", "llmstream [dev]"],
        },
    }
}


def test_core_dependencies_come_with_the_extras_own() -> None:
    assert requirements.requirements(PROJECT, "gateway") == ["pydantic==2.0", "aiohttp==3.0"]


def test_references_to_the_projects_own_extras_are_left_out() -> None:
    assert requirements.requirements(PROJECT, "all") == ["pydantic==2.0"]


@pytest.mark.parametrize(
    ("pyproject", "extra", "message"),
    [
        (PROJECT, "gpu", "no extra 'gpu' (extras: all, gateway)"),
        ({"project": {"dependencies": []}}, "gateway", "no extra 'gateway' (extras: none)"),
        ({"tool": {}}, "gateway", "no [project] table"),
    ],
)
def test_a_missing_extra_or_table_is_named(
    pyproject: dict[str, Any], extra: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        requirements.requirements(pyproject, extra)


@pytest.mark.parametrize("extra", ["inference", "gateway", "operator"])
def test_the_script_lists_what_pyproject_pins_for_each_image(extra: str) -> None:
    project = tomllib.loads((plan.ROOT / "pyproject.toml").read_text())["project"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(plan.ROOT / "pyproject.toml"), extra],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.splitlines() == [*project["dependencies"], *project["optional-dependencies"][extra]]


def test_the_script_fails_with_a_message_on_bad_input(tmp_path: Path) -> None:
    broken = tmp_path / "pyproject.toml"
    broken.write_text("[project\n")
    for argv, code, text in [
        ([str(broken), "gateway"], 1, f"error: {broken}:"),
        ([str(tmp_path / "absent.toml"), "gateway"], 1, "No such file"),
        ([str(plan.ROOT / "pyproject.toml"), "gpu"], 1, "no extra 'gpu'"),
        ([], 2, "usage:"),
    ]:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, check=False
        )
        assert result.returncode == code, (argv, result.stderr)
        assert text in result.stderr, (argv, result.stderr)
        assert result.stdout == ""
