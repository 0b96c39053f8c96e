"""Gateway settings: one validated object built by the CLI (or a test) and passed to the app."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

DEFAULT_PORT = 8080
# The annotation the operator watches to scale an endpoint up from zero replicas.
WAKE_ANNOTATION = "llmstream.dev/wake-requested-at"
CRD_GROUP = "llmstream.dev"
CRD_VERSION = "v1alpha1"
CRD_PLURAL = "llmendpoints"
INFERENCE_PORT_NAME = "http"


def host_and_port(value: str) -> str:
    """`value` when it is `HOST:PORT` (IPv6 hosts in brackets); else a ValueError naming it."""
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} must be HOST:PORT with a port from 1 to 65535")
    return value


class BackendAddressMapping(BaseModel):
    """`--backend-address-map NETWORK=HOST:PORT`: a discovered backend whose address lies in
    `network` is reached at `target` instead of at its pod address and port.

    Only for a gateway run outside the cluster (a test, or `kubectl port-forward` while
    debugging), where pod addresses cannot be reached; every backend in `network` then goes to
    the one `target`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    network: IPv4Network | IPv6Network
    target: str

    @field_validator("target")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        return host_and_port(value)

    @classmethod
    def parse(cls, text: str) -> BackendAddressMapping:
        """Read `NETWORK=HOST:PORT` (a bare address is a one-address network)."""
        network, equals, target = text.strip().partition("=")
        if not equals:
            raise ValueError(f"backend address map {text!r} must look like NETWORK=HOST:PORT")
        try:
            return cls(network=ip_network(network.strip()), target=host_and_port(target.strip()))
        except ValueError as exc:
            raise ValueError(f"backend address map {text!r}: {exc}") from exc

    def covers(self, address: IPv4Address | IPv6Address) -> bool:
        """Whether `address` lies in this mapping's network."""
        return address.version == self.network.version and address in self.network


class GatewayConfig(BaseModel):
    """Everything the gateway app needs to know; flags and env variables map onto these fields
    (see docs/configuration.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: Annotated[str, Field(min_length=1)] = "local"
    namespace: Annotated[str, Field(min_length=1)] = "default"
    discovery: Literal["static", "kubernetes"] = "static"
    backends: tuple[str, ...] = ()
    inference_service: str | None = None
    max_pending_streams: Annotated[int, Field(ge=0)] = 100
    cold_start_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    max_streams_per_connection: Annotated[int, Field(ge=1)] = 8
    backend_capacity: Annotated[int, Field(ge=1)] = 80
    api_key: SecretStr | None = None
    api_key_file: Path | None = None  # re-read when it changes (a mounted Secret rotates)
    idle_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    max_frame_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    heartbeat_s: Annotated[float, Field(gt=0)] = 20.0
    probe_interval_s: Annotated[float, Field(gt=0)] = 1.0
    backend_connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    kubeconfig: Path | None = None  # None: the pod's service account (in-cluster)
    backend_address_map: tuple[BackendAddressMapping, ...] = ()

    @model_validator(mode="after")
    def _backends_match_discovery(self) -> GatewayConfig:
        for url in self.backends:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend {url!r} must be an http:// or https:// URL")
        if self.discovery == "kubernetes" and self.backends:
            raise ValueError("--backend is for static discovery; drop it or use --discovery static")
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("give the API key or --api-key-file, not both")
        if self.discovery != "kubernetes" and (self.kubeconfig or self.backend_address_map):
            raise ValueError(
                "--kubeconfig and --backend-address-map are for --discovery kubernetes"
            )
        return self

    @property
    def service_name(self) -> str:
        """The Service whose EndpointSlices list the inference pods."""
        return self.inference_service or f"{self.endpoint}-inference"
