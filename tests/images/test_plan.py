"""Image build planning and the Dockerfiles' invariants (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from llmstream import __version__
from tools.images import plan

ROOT = plan.ROOT
DOCKERFILES = {name: ROOT / name / "Dockerfile" for name in plan.IMAGES}


def declared_args(dockerfile: Path) -> dict[str, str]:
    args = re.findall(r"^ARG (\w+)(?:=(.*))?$", dockerfile.read_text(), re.MULTILINE)
    return {name: default.strip('"') for name, default in args}


def test_build_command_tags_the_image_and_uses_the_repository_root_as_context() -> None:
    spec = plan.image_spec("gateway")
    options = plan.BuildOptions(base="b:1", tag="9.9.9", ca_bundle=Path("/ca.pem"))
    command = plan.build_command(["docker", "build"], spec, options)
    assert command[:2] == ["docker", "build"]
    assert command[command.index("--file") + 1] == str(ROOT / "gateway" / "Dockerfile")
    assert command[command.index("--tag") + 1] == "llmstream/gateway:9.9.9"
    assert "BASE_IMAGE=b:1" in command
    assert command[command.index("--secret") + 1] == "id=cacert,src=/ca.pem"
    assert command[-1] == str(ROOT)


def test_torch_and_model_arguments_go_to_the_inference_image_only() -> None:
    options = plan.BuildOptions(torch="cpu", bake_default_model=False, torch_index_url="https://i")
    inference = plan.build_args(plan.image_spec("inference"), options)
    gateway = plan.build_args(plan.image_spec("gateway"), options)
    assert inference["TORCH_VARIANT"] == "cpu"
    assert inference["BAKE_DEFAULT_MODEL"] == "false"
    assert inference["TORCH_INDEX_URL"] == "https://i"
    assert not {"TORCH_VARIANT", "BAKE_DEFAULT_MODEL", "TORCH_INDEX_URL"} & set(gateway)


@pytest.mark.parametrize("name", plan.IMAGES)
def test_every_planned_build_arg_is_declared_by_the_dockerfile(name: str) -> None:
    options = plan.BuildOptions(pip_index_url="https://p", torch_index_url="https://t")
    passed = set(plan.build_args(plan.image_spec(name), options))
    assert passed <= set(declared_args(DOCKERFILES[name]))


def test_unknown_image_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="inference, gateway, operator"):
        plan.image_spec("database")


@pytest.mark.parametrize(
    ("requested", "public_available", "chosen"),
    [
        ("auto", True, plan.PUBLIC_BASE),
        ("auto", False, plan.LOCAL_BASE),
        ("debian:custom", False, "debian:custom"),
    ],
)
def test_base_image_choice(requested: str, public_available: bool, chosen: str) -> None:
    assert plan.choose_base(requested, public_available) == chosen


@pytest.mark.parametrize("name", plan.IMAGES)
def test_dockerfile_defaults_to_the_pinned_public_base(name: str) -> None:
    assert declared_args(DOCKERFILES[name])["BASE_IMAGE"] == plan.PUBLIC_BASE
    assert re.search(r":\d+\.\d+\.\d+-slim-bookworm$", plan.PUBLIC_BASE)


@pytest.mark.parametrize("name", plan.IMAGES)
def test_dockerfile_runs_as_numeric_non_root_user_with_oci_labels(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    users = re.findall(r"^USER (.+)$", text, re.MULTILINE)
    assert users == ["10001:10001"]
    for label in ("title", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{label}=" in text


@pytest.mark.parametrize("name", plan.IMAGES)
def test_dockerfile_installs_with_the_constraints_and_a_pip_cache_mount(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    assert "-c /src/constraints.txt" in text
    assert f"--mount=type=cache,id={plan.PIP_CACHE_ID},target=/root/.cache/pip" in text


@pytest.mark.parametrize("name", ["gateway", "operator"])
def test_slim_images_install_no_torch(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    assert f"requirements.py /src/pyproject.toml {name} >" in text
    assert "inference" not in re.findall(r"requirements\.py \S+ (\w+)", text)
    assert "torch_pin" not in text


def stages(dockerfile: Path) -> dict[str, list[str]]:
    """Instructions (continuation lines joined) of every stage, by stage name or `final`."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("FROM "):
            words = line.split()
            current = found.setdefault(words[3] if len(words) > 3 else "final", [])
        elif line and not line.startswith("#"):
            current.append(line)
    return found


@pytest.mark.parametrize("name", plan.IMAGES)
def test_dependencies_are_installed_in_a_layer_no_source_change_touches(name: str) -> None:
    deps = stages(DOCKERFILES[name])["deps"]
    assert any("-r /src/requirements.txt" in line for line in deps)
    copied = " ".join(line for line in deps if line.startswith("COPY"))
    for source in ("pyproject.toml", "llmstream_", "llmstream "):
        assert source not in copied, f"deps stage copies {source}: code changes would void it"


@pytest.mark.parametrize("name", plan.IMAGES)
def test_build_metadata_comes_after_every_step_it_could_void(name: str) -> None:
    final = stages(DOCKERFILES[name])["final"]
    created = next(i for i, line in enumerate(final) if line.startswith("ARG CREATED"))
    assert all(not line.startswith(("RUN", "COPY")) for line in final[created:])
    # llmstream goes on top of the dependencies as a small layer of its own.
    assert any("pip install --no-deps --no-index" in line for line in final[:created])


def test_constraints_agree_with_every_pin_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [*project["dependencies"]]
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "all":
            pins += requirements
    constraints = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in (ROOT / "tools" / "images" / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for pin in pins:
        name, version = pin.split("==")
        assert constraints.get(name.lower().replace("_", "-")) == version, pin


def test_dockerignore_lets_in_exactly_what_the_dockerfiles_copy() -> None:
    allowed = [
        line[1:].removesuffix("/**")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for dockerfile in DOCKERFILES.values():
        for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.M):
            for source in sources.split():
                assert source in allowed, f"{dockerfile}: {source} is not in .dockerignore"
    assert ".venv" not in allowed


def test_build_command_line_defaults_to_every_image_and_refuses_unknown_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tools.images.__main__ import build_parser, main

    assert build_parser().parse_args(["build"]).images == []
    assert build_parser().parse_args(["build", "gateway"]).images == ["gateway"]
    assert main(["build", "database"]) == 2
    assert "unknown image 'database'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("image", "absent"),
    [
        ("inference", ["aiohttp", "websockets", "uvloop", "kopf", "kubernetes"]),
        ("gateway", ["torch", "transformers", "kopf", "kubernetes"]),
        ("operator", ["torch", "transformers", "websockets", "uvloop"]),
    ],
)
def test_umbrella_cli_builds_its_parser_with_only_one_images_dependencies(
    image: str, absent: list[str]
) -> None:
    import subprocess
    import sys

    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in absent)
    code = f"import sys; {blocked}; from llmstream.cli import build_parser; build_parser()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"{image} image: {result.stderr[-800:]}"


# -- make push / make chart-push --------------------------------------------------------------


def test_push_tags_each_local_image_with_its_registry_name() -> None:
    refs = plan.push_refs("registry.example:5000/ml", "1.2.3")
    assert refs == [
        ("llmstream/inference:1.2.3", "registry.example:5000/ml/inference:1.2.3"),
        ("llmstream/gateway:1.2.3", "registry.example:5000/ml/gateway:1.2.3"),
        ("llmstream/operator:1.2.3", "registry.example:5000/ml/operator:1.2.3"),
    ]
    source, target = refs[1]
    assert plan.push_commands("docker", source, target) == [
        ["docker", "tag", "llmstream/gateway:1.2.3", "registry.example:5000/ml/gateway:1.2.3"],
        ["docker", "push", "registry.example:5000/ml/gateway:1.2.3"],
    ]


def test_the_pushed_digest_is_read_from_docker_push_output() -> None:
    digest = "sha256:" + "ab" * 32
    output = f"The push refers to repository [r/gateway]\n0.1.0: digest: {digest} size: 1159\n"
    assert plan.pushed_digest(output) == digest
    assert plan.pushed_digest("error") is None


def test_push_can_name_some_images_only() -> None:
    assert plan.push_refs("127.0.0.1:5000", "dev", ["gateway"]) == [
        ("llmstream/gateway:dev", "127.0.0.1:5000/gateway:dev")
    ]


@pytest.mark.parametrize(
    ("registry", "complaint"),
    [
        ("", "empty"),
        ("https://registry.example/ml", "scheme"),
        ("registry.example/ml/", "trailing slash"),
        ("registry.example/ML", "lower-case"),
        ("registry.example/ml:1.0", "host[:port][/path]"),
    ],
)
def test_a_registry_that_is_not_host_port_path_is_refused_saying_why(
    registry: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        plan.check_registry(registry)


def test_registry_grammar_is_the_one_the_charts_image_registry_accepts() -> None:
    schema = json.loads((ROOT / "charts" / "llmstream" / "values.schema.json").read_text())
    assert schema["properties"]["imageRegistry"]["pattern"] == plan.REGISTRY_PATTERN
    for good in ("docker.io/llmstream", "127.0.0.1:5000/team", "localhost:5000", "ghcr.io/a/b-c"):
        assert plan.check_registry(good) == good


def test_multi_platform_push_is_one_buildx_build_with_the_images_build_arguments() -> None:
    spec = plan.image_spec("inference")
    options = plan.BuildOptions(base="b:1", tag="2.0.0", torch="cpu", ca_bundle=Path("/ca.pem"))
    command = plan.publish_command(
        "docker", spec, options, "docker.io/llmstream", ("linux/amd64", "linux/arm64")
    )
    assert command[:3] == ["docker", "buildx", "build"]
    assert command[command.index("--platform") + 1] == "linux/amd64,linux/arm64"
    assert "--push" in command
    assert "--load" not in command
    assert command[command.index("--tag") + 1] == "docker.io/llmstream/inference:2.0.0"
    # Everything after the tag is exactly what `make images` passes.
    local = plan.build_command(["docker", "build"], spec, options)
    assert command[command.index("--tag") + 2 :] == local[local.index("--tag") + 2 :]


def test_multi_platform_push_takes_the_public_base_never_the_local_stand_in() -> None:
    assert plan.publish_base("auto") == plan.PUBLIC_BASE
    assert plan.publish_base("debian:custom") == "debian:custom"
    with pytest.raises(ValueError, match="single-platform"):
        plan.publish_base(plan.LOCAL_BASE)


def test_platforms_are_a_comma_separated_list_of_os_arch() -> None:
    assert plan.parse_platforms("linux/amd64, linux/arm64") == ("linux/amd64", "linux/arm64")
    assert plan.parse_platforms("linux/arm/v7") == ("linux/arm/v7",)
    with pytest.raises(ValueError, match="'arm64' is not os/arch"):
        plan.parse_platforms("linux/amd64,arm64")


@pytest.mark.parametrize(
    ("registry", "plain_http"),
    [
        ("oci://127.0.0.1:5000/charts", True),
        ("oci://localhost:5000/charts", True),
        ("oci://registry-1.docker.io/llmstream", False),
        ("oci://registry.example/charts", False),
    ],
)
def test_chart_push_speaks_plain_http_to_a_loopback_registry_only(
    registry: str, plain_http: bool
) -> None:
    package = Path("/tmp/llmstream-0.1.0.tgz")
    command = plan.chart_push_command("helm", package, registry)
    assert command[:4] == ["helm", "push", str(package), registry]
    assert ("--plain-http" in command) is plain_http


@pytest.mark.parametrize("registry", ["registry.example/charts", "oci://", "oci://Bad/Path"])
def test_chart_registry_must_be_an_oci_address(registry: str) -> None:
    with pytest.raises(ValueError, match="oci://host"):
        plan.check_chart_registry(registry)


def test_chart_app_version_is_read_from_chart_yaml() -> None:
    text = (plan.CHART / "Chart.yaml").read_text()
    assert plan.chart_app_version(text) == __version__
    assert plan.chart_app_version("version: 1.0.0\nappVersion: '2.1.0'  # note\n") == "2.1.0"


def test_a_chart_is_not_pushed_for_images_of_another_tag() -> None:
    plan.check_chart_matches_images("0.1.0", "")  # no IMAGE_TAG: nothing to compare
    plan.check_chart_matches_images("0.1.0", "0.1.0")
    with pytest.raises(
        ValueError, match=re.escape("IMAGE_TAG=0.2.0 but the chart's appVersion is 0.1.0")
    ):
        plan.check_chart_matches_images("0.1.0", "0.2.0")


def test_push_command_line_reads_registry_platforms_and_tag_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tools.images.__main__ import build_parser

    monkeypatch.setenv("REGISTRY", "127.0.0.1:5000/x")
    monkeypatch.setenv("PLATFORMS", "linux/arm64")
    monkeypatch.setenv("IMAGE_TAG", "dev")
    args = build_parser().parse_args(["push", "gateway"])
    assert (args.registry, args.platforms, args.tag, args.images) == (
        "127.0.0.1:5000/x",
        "linux/arm64",
        "dev",
        ["gateway"],
    )


def test_push_refuses_a_bad_registry_before_looking_for_docker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tools.images.__main__ import main

    assert main(["push", "--registry", "http://registry.example/ml"]) == 2
    assert "has a scheme" in capsys.readouterr().err
