"""The release workflow runs only make targets, and publishes where the chart pulls from."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tools.images import plan

WORKFLOW = plan.ROOT / ".github" / "workflows" / "release.yaml"
# The setup a runner needs before `make`: nothing of it builds or pushes.
SETUP_ACTIONS = {
    "actions/checkout",
    "actions/setup-python",
    "docker/setup-qemu-action",
    "docker/setup-buildx-action",
    "docker/login-action",
}


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    (job,) = workflow["jobs"].values()
    found: list[dict[str, Any]] = job["steps"]
    return found


def make_calls(workflow: dict[Any, Any]) -> dict[str, dict[str, str]]:
    """Each `make <target> VAR=value ...` of the workflow: target -> variables."""
    calls: dict[str, dict[str, str]] = {}
    for step in steps(workflow):
        if "run" not in step:
            continue
        # One make call: a target and VAR=value words, nothing else for the shell to run.
        assert re.fullmatch(r"make [a-z-]+( [A-Z_]+=[^\s;&|`]+)*", step["run"].strip()), step
        target, *variables = step["run"].split()[1:]
        calls[target] = dict(word.split("=", 1) for word in variables)
    return calls


def expand(workflow: dict[Any, Any], value: str, ref_name: str) -> str:
    """A shell word of a step as bash expands it, with the job's env for tag `ref_name`."""
    (job,) = workflow["jobs"].values()
    env = {
        key: text.replace("${{ github.ref_name }}", ref_name) for key, text in job["env"].items()
    }
    result = subprocess.run(
        ["bash", "-c", f'printf %s "{value}"'], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout


def test_release_runs_on_version_tags(workflow: dict[Any, Any]) -> None:
    # PyYAML reads the key `on` as True (YAML 1.1).
    assert workflow[True] == {"push": {"tags": ["v*"]}}


def test_release_runs_setup_actions_and_make_targets_only(workflow: dict[Any, Any]) -> None:
    for step in steps(workflow):
        assert ("uses" in step) != ("run" in step)
        if "uses" in step:
            assert step["uses"].split("@")[0] in SETUP_ACTIONS
    assert list(make_calls(workflow)) == ["push", "chart-push"]


def test_release_pushes_multi_platform_images_tagged_with_the_version(
    workflow: dict[Any, Any],
) -> None:
    push = make_calls(workflow)["push"]
    assert set(push) == {"REGISTRY", "PLATFORMS", "IMAGE_TAG"}
    assert plan.parse_platforms(push["PLATFORMS"]) == ("linux/amd64", "linux/arm64")
    assert expand(workflow, push["IMAGE_TAG"], "v1.2.3") == "1.2.3"
    chart_push = make_calls(workflow)["chart-push"]
    assert set(chart_push) == {"CHART_REGISTRY", "IMAGE_TAG"}
    assert expand(workflow, chart_push["IMAGE_TAG"], "v1.2.3") == "1.2.3"


def test_release_publishes_where_the_chart_pulls_its_images_from(
    workflow: dict[Any, Any],
) -> None:
    values = yaml.safe_load((plan.CHART / "values.yaml").read_text())
    calls = make_calls(workflow)
    assert calls["push"]["REGISTRY"] == values["imageRegistry"]
    # The chart goes to the same Docker Hub namespace (registry-1.docker.io is Hub's API host).
    host, namespace = values["imageRegistry"].split("/", 1)
    assert host == "docker.io"
    assert calls["chart-push"]["CHART_REGISTRY"] == f"oci://registry-1.docker.io/{namespace}"
    plan.check_chart_registry(calls["chart-push"]["CHART_REGISTRY"])
