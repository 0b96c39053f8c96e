"""The operator's ClusterRole grants what the operator does, and nothing it never does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from llmstream_operator import builders, names
from llmstream_operator.builders import Owner
from llmstream_operator.handlers import CHILD_RESOURCES
from llmstream_operator.kube import PLURALS

ROLE = Path(__file__).resolve().parents[2] / "operator" / "rbac" / "clusterrole.yaml"


def grants() -> set[tuple[str, str, str]]:
    role: dict[str, Any] = yaml.safe_load(ROLE.read_text())
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("version", ["1.30", "1.35"])
def test_clusterrole_is_valid(version: str) -> None:
    kubernetes_validate.validate(yaml.safe_load(ROLE.read_text()), version, strict=True)


@pytest.mark.parametrize(("group", "version", "plural"), CHILD_RESOURCES)
def test_every_child_kind_can_be_applied_and_watched(group: str, version: str, plural: str) -> None:
    assert plural in PLURALS.values()
    for verb in ("list", "watch", "create", "patch"):
        assert (group, plural, verb) in grants()


def test_the_operator_can_run_kopf_on_llmendpoints_and_write_status() -> None:
    for resource, verb in [
        (names.PLURAL, "list"),
        (names.PLURAL, "watch"),
        (names.PLURAL, "patch"),
        (f"{names.PLURAL}/status", "patch"),
        (f"{names.PLURAL}/finalizers", "update"),
    ]:
        assert (names.GROUP, resource, verb) in grants()


def test_the_operator_never_deletes_and_reads_no_secrets() -> None:
    assert not {g for g in grants() if g[2] in {"delete", "deletecollection", "*"}}
    assert not {g for g in grants() if g[1] in {"secrets", "pods/exec", "*"}}


def test_the_operator_holds_what_the_gateway_role_grants() -> None:
    # RBAC refuses to create a Role granting more than its creator holds.
    role = builders.gateway_role(Owner(name="qa", namespace="team-a", uid="u"))
    wanted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert wanted <= grants()
