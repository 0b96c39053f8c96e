"""The Helm chart renders valid, least-privilege, strictly secured manifests.

Rendering is offline (`helm template`); every object Kubernetes defines is validated against
the strict schemas of Kubernetes 1.30 and 1.35, with defaults and with non-default values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import (
    CHART,
    CUSTOM_KINDS,
    K8S_VERSIONS,
    ROOT,
    Manifest,
    by_kind,
    load_yaml,
    one,
    render,
    run_helm,
    schema_errors,
)
from llmstream_operator import builders, names

import llmstream
from llmstream.cli import build_parser
from tools.cluster.node.keeper import normalized_ref
from tools.images import plan

NON_DEFAULT_VALUES: dict[str, Any] = {
    "imageRegistry": "registry.example/llm",
    "operator": {
        "image": {
            "repository": "operator",
            "tag": "1.2.3",
            "pullPolicy": "Always",
        },
        "scope": "namespace",
        "watchNamespaces": ["team-a", "team-b"],
        "interval": 5,
        "verbose": True,
        "metricsPort": 9191,
        "livenessPort": 8181,
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}
        ],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                            ]
                        }
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/team": "ml"},
        "podLabels": {"team": "ml"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    },
    "inference": {"image": {"repository": "inference", "tag": "1.2.3-cuda"}},
    "gateway": {"image": {"repository": "gateway", "tag": "1.2.3"}},
    "childImagePullPolicy": "Always",
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccount": {"create": True, "name": "llm-operator", "annotations": {"a": "b"}},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True, "interval": "5s", "labels": {"release": "prom"}},
    },
    "dashboard": {"enabled": True, "namespace": "monitoring", "labels": {"grafana_dashboard": "1"}},
    "helmTest": {
        "enabled": True,
        "endpoint": "qa",
        "namespace": "team-a",
        "prompt": "Hi",
        "maxNewTokens": 8,
        "timeoutSeconds": 600,
        "apiKeySecretRef": {"name": "keys", "key": "api-key"},
    },
}


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(scope="module")
def default_render(helm: Path) -> list[Manifest]:
    return render(helm)


@pytest.fixture(scope="module")
def custom_render(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    return render(helm, "-f", values_file(tmp_path_factory.mktemp("values"), NON_DEFAULT_VALUES))


def operator_container(manifests: list[Manifest]) -> Manifest:
    containers = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# -- lint, sources of truth ------------------------------------------------------------------


def test_helm_lint_passes_in_strict_mode(helm: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


def test_helm_lint_passes_with_non_default_values(helm: Path, tmp_path: Path) -> None:
    run_helm(helm, "lint", "--strict", str(CHART), "-f", values_file(tmp_path, NON_DEFAULT_VALUES))


def test_chart_crd_is_byte_equal_to_the_repository_crd() -> None:
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    repo_crds = sorted(p.name for p in (ROOT / "crds").iterdir())
    assert chart_crds == repo_crds
    for name in repo_crds:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), name


def test_chart_rules_file_is_byte_equal_to_the_operator_clusterrole() -> None:
    copy = CHART / "files" / "operator-clusterrole.yaml"
    assert copy.read_bytes() == (ROOT / "operator" / "rbac" / "clusterrole.yaml").read_bytes()


def test_chart_app_version_is_the_llmstream_version() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["appVersion"] == llmstream.__version__


# -- strict validation -------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", ["default", "non-default"])
def test_every_rendered_object_passes_strict_kubernetes_validation(
    variant: str, version: str, default_render: list[Manifest], custom_render: list[Manifest]
) -> None:
    manifests = default_render if variant == "default" else custom_render
    kinds = {m["kind"] for m in manifests}
    checked = [m for m in manifests if m["kind"] not in CUSTOM_KINDS]
    errors = {f"{m['kind']}/{m['metadata']['name']}": schema_errors(m, version) for m in checked}
    assert {name: e for name, e in errors.items() if e} == {}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Pod"} <= kinds


def test_strict_validation_catches_a_misspelled_field(default_render: list[Manifest]) -> None:
    deployment = json.loads(json.dumps(one(default_render, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert any("imagePullPolicyy" in e for e in schema_errors(deployment, "1.35"))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"operator": {"scope": "everywhere"}}, "scope"),
        ({"operator": {"metricsPort": 70000}}, "metricsPort"),
        ({"operator": {"imagee": {}}}, "imagee"),
        ({"helmTest": {"endpoint": "Not_A_Name"}}, "endpoint"),
        ({"monitoring": {"podMonitor": {"enabled": True, "interval": "soon"}}}, "interval"),
        ({"imageRegistry": "https://registry.example/llm"}, "imageRegistry"),
        ({"imageRegistry": "registry.example/llm/"}, "imageRegistry"),
        ({"imageRegistry": "registry.example/LLM"}, "imageRegistry"),
    ],
)
def test_values_schema_refuses_bad_values_naming_the_field(
    helm: Path, tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    result = run_helm(
        helm, "template", "x", str(CHART), "-f", values_file(tmp_path, values), check=False
    )
    assert result.returncode != 0
    assert named in result.stderr


# -- RBAC ------------------------------------------------------------------------------------


def test_cluster_scope_grants_exactly_the_operator_clusterrole_rules(
    default_render: list[Manifest],
) -> None:
    source = load_yaml(ROOT / "operator" / "rbac" / "clusterrole.yaml")
    role = one(default_render, "ClusterRole")
    binding = one(default_render, "ClusterRoleBinding")
    account = one(default_render, "ServiceAccount")
    assert role["rules"] == source["rules"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": "llmstream-system",
        }
    ]
    assert by_kind(default_render, "Role") == []


def test_namespace_scope_uses_a_role_per_watched_namespace_and_reads_only_cluster_wide(
    custom_render: list[Manifest],
) -> None:
    source = load_yaml(ROOT / "operator" / "rbac" / "clusterrole.yaml")
    cluster_kinds = {"namespaces", "customresourcedefinitions"}
    namespaced_rules = [r for r in source["rules"] if not set(r["resources"]) & cluster_kinds]
    scanning_rules = [r for r in source["rules"] if set(r["resources"]) & cluster_kinds]
    scanning = one(custom_render, "ClusterRole")
    assert scanning["rules"] == scanning_rules
    assert {verb for rule in scanning["rules"] for verb in rule["verbs"]} == {"list", "watch"}
    assert (
        one(custom_render, "ClusterRoleBinding")["roleRef"]["name"]
        == (scanning["metadata"]["name"])
    )
    roles = by_kind(custom_render, "Role")
    bindings = by_kind(custom_render, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(r["rules"] == namespaced_rules for r in roles)
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(
        b["subjects"]
        == [{"kind": "ServiceAccount", "name": "llm-operator", "namespace": "llmstream-system"}]
        for b in bindings
    )
    assert (
        env_of(operator_container(custom_render))["LLMSTREAM_OPERATOR_NAMESPACE"] == "team-a,team-b"
    )


def test_namespace_scope_can_go_without_any_cluster_scoped_rbac(helm: Path) -> None:
    manifests = render(
        helm, "--set", "operator.scope=namespace", "--set", "rbac.clusterScanning=false"
    )
    assert by_kind(manifests, "ClusterRole") == []
    assert by_kind(manifests, "ClusterRoleBinding") == []
    assert len(by_kind(manifests, "Role")) == 1


def test_namespace_scope_without_a_list_watches_the_release_namespace(helm: Path) -> None:
    manifests = render(helm, "--set", "operator.scope=namespace", namespace="ml")
    assert [r["metadata"]["namespace"] for r in by_kind(manifests, "Role")] == ["ml"]
    container = operator_container(manifests)
    assert env_of(container)["LLMSTREAM_OPERATOR_NAMESPACE"] == "ml"
    assert "--all-namespaces" not in container.get("args", [])


# -- the operator Deployment -------------------------------------------------------------------


def test_operator_runs_cluster_wide_by_default(default_render: list[Manifest]) -> None:
    container = operator_container(default_render)
    assert container["command"] == ["llmstream", "operator", "run"]
    assert container["args"] == ["--all-namespaces"]
    assert "LLMSTREAM_OPERATOR_NAMESPACE" not in env_of(container)


def test_operator_is_secured_exactly_like_the_inference_pods(
    default_render: list[Manifest],
) -> None:
    pod = one(default_render, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == builders.pod_security()
    assert operator_container(default_render)["securityContext"] == builders.container_security()
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]


def test_operator_has_probes_resources_and_a_single_replica(default_render: list[Manifest]) -> None:
    deployment = one(default_render, "Deployment")
    container = operator_container(default_render)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "healthz": 8081}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


def test_every_operator_variable_is_a_flag_of_operator_run(custom_render: list[Manifest]) -> None:
    parser = build_parser()
    run = parser.parse_args(["operator", "run"])
    known = {f"LLMSTREAM_OPERATOR_{k.upper()}" for k in vars(run)}
    used = {n for n in env_of(operator_container(custom_render)) if n.startswith("LLMSTREAM_")}
    assert used
    assert used <= known
    assert operator_container(custom_render)["args"] == ["--verbose"]


def rendered_images(manifests: list[Manifest]) -> dict[str, str]:
    """The image of each component: the operator's own, the two it passes on, the test pod's."""
    env = env_of(operator_container(manifests))
    return {
        "operator": operator_container(manifests)["image"],
        "inference": env["LLMSTREAM_OPERATOR_INFERENCE_IMAGE"],
        "gateway": env["LLMSTREAM_OPERATOR_GATEWAY_IMAGE"],
        "helm-test": one(manifests, "Pod")["spec"]["containers"][0]["image"],
    }


def test_default_images_are_the_operators_own_defaults(default_render: list[Manifest]) -> None:
    # The same images as the operator's defaults (the chart spells them in full: docker.io/...).
    images = rendered_images(default_render)
    assert normalized_ref(images["inference"]) == normalized_ref(names.DEFAULT_INFERENCE_IMAGE)
    assert normalized_ref(images["gateway"]) == normalized_ref(names.DEFAULT_GATEWAY_IMAGE)


@pytest.mark.parametrize("name", plan.IMAGES)
def test_default_images_are_the_published_ones_and_the_locally_built_ones(
    default_render: list[Manifest], name: str
) -> None:
    published = f"docker.io/llmstream/{name}:{llmstream.__version__}"
    assert rendered_images(default_render)[name] == published
    # `make images` tags llmstream/<name>:<version>: Docker and containerd spell it in full.
    assert normalized_ref(plan.image_spec(name).ref(llmstream.__version__)) == published


def test_image_registry_prefixes_all_three_images_and_the_test_pod(helm: Path) -> None:
    manifests = render(helm, "--set", "imageRegistry=127.0.0.1:5000/team")
    version = llmstream.__version__
    assert rendered_images(manifests) == {
        "operator": f"127.0.0.1:5000/team/operator:{version}",
        "inference": f"127.0.0.1:5000/team/inference:{version}",
        "gateway": f"127.0.0.1:5000/team/gateway:{version}",
        "helm-test": f"127.0.0.1:5000/team/gateway:{version}",
    }


def test_empty_image_registry_takes_each_repository_as_it_is(helm: Path) -> None:
    manifests = render(
        helm, "--set", "imageRegistry=",
        "--set", "operator.image.repository=quay.example/ops/llm-operator",
        "--set", "inference.image.repository=ghcr.example/ml/llm-inference",
        "--set", "gateway.image.tag=dev",
    )  # fmt: skip
    images = rendered_images(manifests)
    assert images["operator"] == f"quay.example/ops/llm-operator:{llmstream.__version__}"
    assert images["inference"] == f"ghcr.example/ml/llm-inference:{llmstream.__version__}"
    assert images["gateway"] == images["helm-test"] == "gateway:dev"


def test_non_default_values_reach_the_deployment(custom_render: list[Manifest]) -> None:
    pod = one(custom_render, "Deployment")["spec"]["template"]
    container = operator_container(custom_render)
    env = env_of(container)
    assert container["image"] == "registry.example/llm/operator:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert env["LLMSTREAM_OPERATOR_INFERENCE_IMAGE"] == "registry.example/llm/inference:1.2.3-cuda"
    assert env["LLMSTREAM_OPERATOR_IMAGE_PULL_POLICY"] == "Always"
    assert env["LLMSTREAM_OPERATOR_METRICS_PORT"] == "9191"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["spec"]["serviceAccountName"] == "llm-operator"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"


# -- monitoring, dashboard, helm test ---------------------------------------------------------


def test_monitoring_and_dashboard_are_off_by_default(default_render: list[Manifest]) -> None:
    assert {m["kind"] for m in default_render} & CUSTOM_KINDS == set()
    assert by_kind(default_render, "ConfigMap") == []


def test_pod_monitor_selects_gateway_and_inference_pods_only(custom_render: list[Manifest]) -> None:
    monitor = one(custom_render, "PodMonitor")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert spec["podMetricsEndpoints"][0]["port"] == names.PORT_NAME

    def selected(labels: dict[str, str]) -> bool:
        match = spec["selector"]
        plain = all(labels.get(k) == v for k, v in match["matchLabels"].items())
        return plain and all(labels.get(e["key"]) in e["values"] for e in match["matchExpressions"])

    assert selected(names.labels("qa", names.GATEWAY))
    assert selected(names.labels("qa", names.INFERENCE))
    operator_pod = one(custom_render, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selected(operator_pod)


def test_service_monitor_scrapes_the_operator_metrics_service(
    custom_render: list[Manifest],
) -> None:
    monitor = one(custom_render, "ServiceMonitor")
    service = one(custom_render, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    labels = service["metadata"]["labels"]
    assert all(labels[k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def _exported_metric_names() -> set[str]:
    from llmstream_gateway.metrics import GatewayMetrics
    from llmstream_operator.metrics import OperatorMetrics

    names_: set[str] = set()
    for registry in (GatewayMetrics("x").registry, OperatorMetrics().registry):
        for family in registry.collect():
            names_.add(family.name)
            names_.update(f"{family.name}{s}" for s in ("_total", "_bucket", "_sum", "_count"))
    return names_


def test_dashboard_charts_the_required_series_from_exported_metrics(
    custom_render: list[Manifest],
) -> None:
    import re

    config_map = one(custom_render, "ConfigMap")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["llmstream.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bllmstream_[a-z_]+", e)}
    assert used <= _exported_metric_names(), used - _exported_metric_names()
    for needed in (
        "llmstream_gateway_time_to_first_token_seconds_bucket",
        "llmstream_gateway_inter_token_latency_seconds_bucket",
        "llmstream_gateway_streams_active",
        "llmstream_gateway_streams_pending",
        "llmstream_gateway_tokens_total",
        "llmstream_operator_desired_replicas",
    ):
        assert needed in used


def test_helm_test_hook_streams_a_prompt_through_the_named_endpoint(
    custom_render: list[Manifest],
) -> None:
    pod = one(custom_render, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["namespace"] == "team-a"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example/llm/gateway:1.2.3"
    assert container["command"] == [
        "llmstream", "chat", "ws://qa-gateway.team-a.svc:8080/v1/ws",
        "--prompt", "Hi", "--max-new-tokens", "8",
    ]  # fmt: skip
    key = next(e for e in container["env"] if e["name"] == "LLMSTREAM_API_KEY")
    assert key["valueFrom"] == {"secretKeyRef": {"name": "keys", "key": "api-key"}}
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["activeDeadlineSeconds"] == 600
    assert container["securityContext"] == builders.container_security()


def test_helm_test_url_matches_the_operators_gateway_url(default_render: list[Manifest]) -> None:
    command = one(default_render, "Pod")["spec"]["containers"][0]["command"]
    assert command[2] == names.gateway_url("tiny", "llmstream-system")


def test_notes_tell_how_to_apply_an_example_and_stream_with_wscat(helm: Path) -> None:
    result = run_helm(helm, "install", "demo", str(CHART), "--dry-run=client", "--namespace", "ml")
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -f examples/llmendpoint-cpu-tiny.yaml" in notes
    assert "kubectl port-forward svc/tiny-gateway 8080:8080" in notes
    assert "wscat -c ws://127.0.0.1:8080/v1/ws" in notes
    assert "helm test demo -n ml" in notes


def test_notes_name_the_images_and_where_to_read_about_pulling_them(helm: Path) -> None:
    result = run_helm(
        helm, "install", "demo", str(CHART), "--dry-run=client", "--namespace", "ml",
        "--set", "imageRegistry=127.0.0.1:5000/team",
    )  # fmt: skip
    notes = " ".join(result.stdout.split("NOTES:", 1)[1].split())
    for name in ("operator", "inference", "gateway"):
        assert f"127.0.0.1:5000/team/{name}:{llmstream.__version__}" in notes
    assert "ImagePullBackOff" in notes
    assert 'docs/install.md, section "Images"' in notes
    # The operator's ImagePullBackOff message links docs/install.md#images too.
    assert "\n## Images\n" in (ROOT / "docs" / "install.md").read_text()
