"""Each component's image installs what its code imports: every third-party module imported
anywhere in `llmstream_<component>` (or the shared `llmstream` package it uses) belongs to a
distribution in the core dependencies or the component's extra.

The gateway once imported `kubernetes` without its extra listing it: every test passed (the
dev venv has every extra) until its image ran as a pod and died at start.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tools.images import plan, requirements

COMPONENTS = {
    "inference": plan.ROOT / "inference" / "llmstream_inference",
    "gateway": plan.ROOT / "gateway" / "llmstream_gateway",
    "operator": plan.ROOT / "operator" / "llmstream_operator",
}
SHARED = plan.ROOT / "llmstream"
OWN = {"llmstream", "llmstream_inference", "llmstream_gateway", "llmstream_operator"}


def top_level_imports(folder: Path) -> dict[str, str]:
    """Every absolute import's top-level module -> one file that imports it."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(plan.ROOT)))
    return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    return _normalize(re.split(r"[=<>!~\[; (]", requirement.strip(), maxsplit=1)[0])


def distributions_of(extra: str) -> set[str]:
    """The extra's distributions and everything they pull in (what pip puts in the image)."""
    pyproject = tomllib.loads((plan.ROOT / "pyproject.toml").read_text())
    pending = [_name(line) for line in requirements.requirements(pyproject, extra)]
    closure: set[str] = set()
    while pending:
        name = pending.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        pending += [_name(r) for r in requires if "extra ==" not in r.replace('"', " ")]
    return closure


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_third_party_import_is_installed_by_the_components_extra(component: str) -> None:
    providers = metadata.packages_distributions()
    allowed = distributions_of(component)
    imports = top_level_imports(COMPONENTS[component]) | top_level_imports(SHARED)
    missing = []
    for module, where in sorted(imports.items()):
        if module in OWN or module in sys.stdlib_module_names:
            continue
        dists = {_normalize(d) for d in providers.get(module, [])}
        if not dists:
            missing.append(f"{module} (imported in {where}) comes from no installed distribution")
        elif not dists & allowed:
            missing.append(f"{module} (imported in {where}) needs one of {sorted(dists)}")
    assert missing == [], f"the {component} extra lacks: " + "; ".join(missing)
