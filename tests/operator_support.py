"""The operator run in-process against the control-plane tier (shared by its test modules)."""

from __future__ import annotations

from typing import Any

from testsupport import pod_address_map

from tools.cluster.controlplane import ControlPlane


class Operator:
    """The operator, cluster-wide, on its own thread in this process; restartable.

    Its load probe reads gateway pods through `--pod-address-map`: kwok's pods run nothing, so
    the whole pod range goes to a closed loopback port and no pod address is ever dialled.
    """

    def __init__(self, control_plane: ControlPlane, token: str, unreachable_port: int) -> None:
        from llmstream_operator.kube import KubeAccess

        self.access = KubeAccess(
            server=control_plane.server, ca_path=str(control_plane.ca_cert), token=token
        )
        self.unreachable_port = unreachable_port
        self.thread: Any = None

    def start(self) -> None:
        from llmstream_operator.app import OperatorThread, create_runtime
        from llmstream_operator.runtime import OperatorSettings

        from llmstream.addressmap import AddressMapping

        settings = OperatorSettings(
            metrics_port=None,
            liveness_endpoint=None,
            pod_address_map=(AddressMapping.parse(pod_address_map(self.unreachable_port)),),
        )
        self.thread = OperatorThread(create_runtime(settings, self.access))
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None

    def restart(self) -> None:
        self.stop()
        self.start()
