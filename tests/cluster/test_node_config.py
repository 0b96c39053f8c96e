"""The real node's pure parts: its addresses, its files, and the pause image archive."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from tools.cluster import components, routes
from tools.cluster.node import config, keeper, pause


@pytest.fixture
def layout(tmp_path: Path) -> config.NodeLayout:
    return config.NodeLayout(tmp_path / "run", tmp_path / "images")


def test_every_node_address_is_inside_the_locally_routed_pod_range_and_outside_kwoks() -> None:
    pod = ipaddress.ip_network(components.POD_CIDR, strict=False)
    kwok = ipaddress.ip_network(components.KWOK_POD_CIDR, strict=False)
    local = routes.cluster_networks(components.POD_CIDR, components.SERVICE_CIDR)
    node_pods = ipaddress.ip_network(config.NODE_POD_CIDR)
    link = ipaddress.ip_network(f"{config.HOST_ADDRESS}/{config.LINK_PREFIX}", strict=False)
    for network in (node_pods, link):
        assert network.subnet_of(pod)
        assert not network.overlaps(kwok)
        assert any(network.subnet_of(n) for n in local)
    assert not node_pods.overlaps(link)
    assert ipaddress.ip_address(config.NODE_ADDRESS) in link


def test_link_names_fit_the_kernels_fifteen_characters() -> None:
    largest_pid = 4194304  # /proc/sys/kernel/pid_max can go no higher
    assert len(config.host_link(largest_pid)) <= 15
    assert len(config.node_link(largest_pid)) <= 15
    assert config.netns_name(42).startswith(config.NETNS_PREFIX)


def test_containerd_config_is_its_own_instance_with_cri_on_cgroupfs_and_debians_cni(
    layout: config.NodeLayout,
) -> None:
    parsed = tomllib.loads(config.containerd_config(layout, pause.IMAGE))
    assert parsed["root"] == str(layout.images)
    assert parsed["state"] == str(layout.containerd_state)
    assert parsed["grpc"]["address"] == str(layout.containerd_socket)
    assert parsed["grpc"]["address"] != "/run/containerd/containerd.sock"  # not dockerd's
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == pause.IMAGE
    assert cri["netns_mounts_under_state_dir"] is True
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["SystemdCgroup"] is False
    assert Path(runc["Root"]).is_relative_to(layout.root)  # not /run/containerd/runc
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"] == {
        "bin_dir": "/usr/lib/cni",
        "conf_dir": str(layout.cni_conf_dir),
        "max_conf_num": 1,
    }
    assert cri["stream_server_address"] == "127.0.0.1"


def test_the_pod_network_masquerades_nothing_and_keeps_its_allocations_in_the_run_folder(
    layout: config.NodeLayout,
) -> None:
    network = config.cni_network(layout)
    bridge, portmap = network["plugins"]
    assert bridge["type"] == "bridge"
    assert bridge["bridge"] == config.BRIDGE
    assert bridge["ipMasq"] is False
    assert bridge["isGateway"] is True
    assert bridge["ipam"]["ranges"] == [[{"subnet": config.NODE_POD_CIDR}]]
    assert bridge["ipam"]["dataDir"] == str(layout.cni_data_dir)
    assert portmap["type"] == "portmap"
    assert {p["type"] for p in network["plugins"]} <= set(config.CNI_PLUGINS)


def test_kubelet_config_handles_cgroup_v1_swap_and_keeps_imported_images(
    layout: config.NodeLayout, tmp_path: Path
) -> None:
    serving = (tmp_path / "s.crt", tmp_path / "s.key")
    kubelet = config.kubelet_config(layout, tmp_path / "ca.crt", serving)
    assert kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["failCgroupV1"] is False
    assert kubelet["failSwapOn"] is False
    assert kubelet["imageGCHighThresholdPercent"] == 100
    assert kubelet["authentication"]["anonymous"] == {"enabled": False}
    assert kubelet["authentication"]["x509"]["clientCAFile"] == str(tmp_path / "ca.crt")
    assert kubelet["clusterDNS"] == [config.NODE_ADDRESS]
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{layout.containerd_socket}"
    assert (kubelet["tlsCertFile"], kubelet["tlsPrivateKeyFile"]) == tuple(map(str, serving))
    assert Path(kubelet["podLogsDir"]).is_relative_to(layout.root)
    argv = config.kubelet_args(Path("/bin/kubelet"), layout)
    assert f"--node-ip={config.NODE_ADDRESS}" in argv
    assert f"--root-dir={layout.kubelet_root}" in argv


def test_kube_proxy_leaves_the_machine_wide_conntrack_settings_alone(
    layout: config.NodeLayout,
) -> None:
    proxy = config.kube_proxy_config(layout, components.POD_CIDR)
    assert proxy["mode"] == "iptables"
    assert proxy["iptables"]["masqueradeAll"] is True
    assert proxy["conntrack"]["maxPerCore"] == 0
    assert proxy["conntrack"]["min"] == 0


def test_cluster_dns_forwards_nothing_off_the_machine(tmp_path: Path) -> None:
    corefile = config.corefile(tmp_path / "k")
    plugins = {line.split()[0] for line in corefile.splitlines() if line.strip()}
    assert not plugins & {"forward", "proxy", "grpc"}
    assert f"bind {config.NODE_ADDRESS}" in corefile
    assert f"kubeconfig {tmp_path / 'k'}" in corefile
    assert config.resolv_conf().startswith(f"nameserver {config.NODE_ADDRESS}\n")


def test_the_keeper_spec_survives_its_json_file() -> None:
    spec = keeper.Spec("/r", "/i", "/k", "/p", "/c", "/pause", "10.96.0.0/16", ("a/b:1",))
    assert keeper.Spec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("short", "full"),
    [
        ("llmstream/gateway:0.1.0", "docker.io/llmstream/gateway:0.1.0"),
        ("busybox:1", "docker.io/library/busybox:1"),
        ("llmstream.local/pause:1", "llmstream.local/pause:1"),
        ("localhost/x:1", "localhost/x:1"),
        ("registry:5000/x:1", "registry:5000/x:1"),
    ],
)
def test_image_names_are_normalized_as_cri_does(short: str, full: str) -> None:
    assert keeper.normalized_ref(short) == full


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def test_the_pause_archive_is_a_valid_oci_layout_whose_digests_match_their_blobs() -> None:
    archive, digest = pause.oci_archive(b"\x7fELF-pretend")
    files = _members(archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    blobs = {name: data for name, data in files.items() if name.startswith("blobs/sha256/")}
    for name, data in blobs.items():
        assert name.rsplit("/", 1)[1] == hashlib.sha256(data).hexdigest()
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["io.containerd.image.name"] == pause.IMAGE
    manifest = json.loads(blobs[f"blobs/sha256/{digest.removeprefix('sha256:')}"])
    config_blob = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"][7:]])
    (layer_ref,) = manifest["layers"]
    layer = blobs["blobs/sha256/" + layer_ref["digest"][7:]]
    assert config_blob["rootfs"]["diff_ids"] == [layer_ref["digest"]]  # uncompressed layer
    assert config_blob["config"]["Entrypoint"] == ["/pause"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        member = tar.getmember("pause")
        assert member.mode == 0o755
        assert tar.extractfile(member).read() == b"\x7fELF-pretend"  # type: ignore[union-attr]


def test_the_pause_archive_is_reproducible_and_changes_with_the_binary() -> None:
    assert pause.oci_archive(b"one") == pause.oci_archive(b"one")
    assert pause.oci_archive(b"one")[1] != pause.oci_archive(b"two")[1]


def test_the_pause_program_compiles_static_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    from testsupport import require_tool

    binary = pause.build_binary(tmp_path / "pause", require_tool("gcc", "apt-get install gcc"))
    assert subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.strip()
    process = subprocess.Popen([binary])
    time.sleep(0.2)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(5) == 0


def test_an_image_rebuilt_with_new_labels_only_is_not_imported_again() -> None:
    base = {
        "Id": "sha256:1",
        "Created": "2026-11-27T10:00:00Z",
        "RootFS": {"Layers": ["sha256:a", "sha256:b"]},
        "Config": {"Cmd": ["serve"], "Env": ["A=1"], "Labels": {"created": "10:00"}},
    }
    relabelled = {
        **base,
        "Id": "sha256:2",
        "Created": "2026-11-27T11:00:00Z",
        "Config": {"Cmd": ["serve"], "Env": ["A=1"], "Labels": {"created": "11:00"}},
    }
    new_cmd = {**base, "Config": {"Cmd": ["other"], "Env": ["A=1"]}}
    new_layer = {**base, "RootFS": {"Layers": ["sha256:a", "sha256:c"]}}
    same = keeper.runtime_identity(base)
    assert keeper.runtime_identity(relabelled) == same
    assert keeper.runtime_identity(new_cmd) != same
    assert keeper.runtime_identity(new_layer) != same
