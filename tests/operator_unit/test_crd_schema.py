"""The CRD's OpenAPI schema and the operator's pydantic models describe the same object.

Both sides are walked together: property names (camelCase aliases), required fields, types,
defaults, enums and bounds must agree, so neither can change without the other.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import kubernetes_validate
import pytest
import yaml
from llmstream_operator import names
from llmstream_operator.spec import LLMEndpointSpec
from llmstream_operator.status import EndpointStatus
from pydantic import BaseModel
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "llmstream.dev_llmendpoints.yaml"
BOUND_KEYS = {
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "maxLength",
    "maxItems",
    "maxProperties",
    "pattern",
}


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _bounds(metadata: list[Any], kind: str) -> dict[str, Any]:
    """CRD keywords equivalent to pydantic/annotated-types constraints."""
    length_key = {"string": "Length", "array": "Items", "object": "Properties"}.get(kind, "Length")
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            found["minimum"] = item.ge
        elif isinstance(item, annotated_types.Gt):
            found["minimum"] = item.gt
            found["exclusiveMinimum"] = True
        elif isinstance(item, annotated_types.Le):
            found["maximum"] = item.le
        elif isinstance(item, annotated_types.MinLen):
            found[f"min{length_key}"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            found[f"max{length_key}"] = item.max_length
        for attr, key in (("pattern", "pattern"), ("max_length", f"max{length_key}")):
            value = getattr(item, attr, None)
            if value is not None and not isinstance(item, annotated_types.MaxLen):
                found[key] = value
    return found


def _unwrap(tp: Any, metadata: list[Any]) -> Any:
    """Strip Optional and Annotated, collecting Annotated metadata."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp, *extra = typing.get_args(tp)
            for item in extra:
                metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _json_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if (isinstance(tp, type) and issubclass(tp, BaseModel)) or origin is dict:
        return "object"
    if origin is list:
        return "array"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, "?")


def compare(schema: dict[str, Any], tp: Any, path: str, metadata: list[Any]) -> list[str]:
    """Differences between a CRD schema node and a Python type, one line each."""
    tp = _unwrap(tp, metadata)
    origin = typing.get_origin(tp)
    problems: list[str] = []
    if origin in (typing.Union, types.UnionType):  # int-or-string quantities
        alternatives = [_unwrap(a, metadata) for a in typing.get_args(tp)]
        if sorted(map(_json_type, alternatives)) != ["integer", "string"]:
            return [f"{path}: unsupported union {tp}"]
        if not schema.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: expected x-kubernetes-int-or-string")
        kind = "string"
    elif origin is Literal:
        if schema.get("enum") != list(typing.get_args(tp)):
            problems.append(f"{path}: enum {schema.get('enum')} != {list(typing.get_args(tp))}")
        kind = "string"
    else:
        kind = _json_type(tp)
    if origin not in (typing.Union, types.UnionType) and schema.get("type") != kind:
        problems.append(f"{path}: type {schema.get('type')!r} != {kind!r}")
    crd_bounds = {k: v for k, v in schema.items() if k in BOUND_KEYS}
    if crd_bounds != _bounds(metadata, kind):
        problems.append(f"{path}: bounds {crd_bounds} != {_bounds(metadata, kind)}")
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        problems += compare_model(schema, tp, path)
    elif origin is dict:
        value_type = typing.get_args(tp)[1]
        if value_type is Any:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                problems.append(f"{path}: free-form map needs x-kubernetes-preserve-unknown-fields")
        else:
            problems += compare(schema.get("additionalProperties", {}), value_type, f"{path}.*", [])
    elif origin is list:
        problems += compare(schema.get("items", {}), typing.get_args(tp)[0], f"{path}[]", [])
    return problems


def compare_model(schema: dict[str, Any], model: type[BaseModel], path: str) -> list[str]:
    """Compare an object schema with a pydantic model, field by field."""
    properties: dict[str, Any] = schema.get("properties", {})
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    problems: list[str] = []
    if set(properties) != set(fields):
        problems.append(f"{path}: properties {sorted(properties)} != fields {sorted(fields)}")
    required = {alias for alias, f in fields.items() if f.is_required()}
    if set(schema.get("required", [])) != required:
        problems.append(f"{path}: required {schema.get('required', [])} != {sorted(required)}")
    for alias, field in fields.items():
        if alias not in properties:
            continue
        sub, where = properties[alias], f"{path}.{alias}"
        problems += compare(sub, field.annotation, where, list(field.metadata))
        problems += _compare_default(sub, field, where)
    return problems


def _compare_default(schema: dict[str, Any], field: FieldInfo, path: str) -> list[str]:
    if field.is_required():
        return [f"{path}: CRD default for a required field"] if "default" in schema else []
    default = field.get_default(call_default_factory=True)
    if default is None:
        return (
            [f"{path}: CRD default {schema['default']!r} but none here"]
            if "default" in schema
            else []
        )
    if "default" not in schema:
        return [f"{path}: default {default!r} missing from the CRD"]
    expected = (
        type(default).model_validate(schema["default"])
        if isinstance(default, BaseModel)
        else schema["default"]
    )
    return [] if expected == default else [f"{path}: default {schema['default']!r} != {default!r}"]


def test_spec_schema_matches_the_pydantic_spec_model() -> None:
    assert compare(root_schema()["properties"]["spec"], LLMEndpointSpec, "spec", []) == []


def test_status_schema_matches_the_pydantic_status_model() -> None:
    assert compare(root_schema()["properties"]["status"], EndpointStatus, "status", []) == []


def test_the_comparison_notices_a_drifted_default() -> None:
    schema = root_schema()["properties"]["spec"]
    schema["properties"]["scaling"]["properties"]["idleSeconds"]["default"] = 301
    assert compare(schema, LLMEndpointSpec, "spec", []) == [
        "spec.scaling.idleSeconds: default 301 != 300"
    ]


def test_the_comparison_notices_a_drifted_bound_and_a_missing_field() -> None:
    schema = root_schema()["properties"]["spec"]
    schema["properties"]["engine"]["properties"]["maxBatchSize"]["maximum"] = 2048
    del schema["properties"]["gateway"]["properties"]["serviceType"]
    problems = compare(schema, LLMEndpointSpec, "spec", [])
    assert any(p.startswith("spec.engine.maxBatchSize: bounds") for p in problems)
    assert any(p.startswith("spec.gateway: properties") for p in problems)


def test_crd_names_match_the_operator_names() -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == names.CRD_NAME
    assert crd["spec"]["group"] == names.GROUP
    assert crd["spec"]["names"]["kind"] == names.KIND
    assert crd["spec"]["names"]["plural"] == names.PLURAL
    assert crd["spec"]["names"]["shortNames"] == [names.SHORT_NAME]
    assert [v["name"] for v in crd["spec"]["versions"]] == [names.VERSION]


def test_crd_has_status_subresource_and_printer_columns() -> None:
    version = load_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        "Model", "Phase", "Reason", "Ready", "Desired", "Streams", "URL", "Message", "Age"
    ]  # fmt: skip


@pytest.mark.parametrize("k8s_version", ["1.30", "1.35"])
def test_crd_is_a_valid_customresourcedefinition(k8s_version: str) -> None:
    kubernetes_validate.validate(load_crd(), k8s_version, strict=True)


def test_cel_rules_name_the_field_they_guard() -> None:
    schema = root_schema()
    scaling = schema["properties"]["spec"]["properties"]["scaling"]
    assert scaling["x-kubernetes-validations"] == [
        {
            "rule": "!has(self.minReplicas) || !has(self.maxReplicas) "
            "|| self.minReplicas <= self.maxReplicas",
            "message": "scaling.minReplicas must be <= scaling.maxReplicas",
        }
    ]
    source = schema["properties"]["spec"]["properties"]["model"]["properties"]["source"]
    assert "model.source" in source["x-kubernetes-validations"][0]["message"]
    assert names.MAX_ENDPOINT_NAME_LENGTH == 53
    assert "size(self.metadata.name) <= 53" in schema["x-kubernetes-validations"][0]["rule"]
