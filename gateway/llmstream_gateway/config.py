"""Gateway settings: one validated object built by the CLI (or a test) and passed to the app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

from llmstream import defaults
from llmstream.addressmap import AddressMapping
from llmstream.wire import (
    BODY_TIMEOUT_S,
    GATEWAY_SHUTDOWN_DRAIN_S,
    HEADER_TIMEOUT_S,
    KEEPALIVE_TIMEOUT_S,
    MAX_BODY_BYTES,
    SSE_HEARTBEAT_S,
)

DEFAULT_PORT = 8080
DEFAULT_BACKEND_CONNECT_TIMEOUT_S = 5.0
# Longest silence on a backend connection: the inference server sends a heartbeat every
# SSE_HEARTBEAT_S, so a longer gap means it hung (the stream then fails or is retried).
DEFAULT_BACKEND_READ_TIMEOUT_S = 6 * SSE_HEARTBEAT_S
INFERENCE_PORT_NAME = "http"


class GatewayConfig(BaseModel):
    """Everything the gateway app needs to know; flags and env variables map onto these fields
    (see docs/configuration.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: Annotated[str, Field(min_length=1)] = "local"
    # The names `model` may take in OpenAI requests (the model's own first); empty: whatever
    # the backends list at GET /v1/models, learned from the first one that answers.
    model_names: tuple[str, ...] = ()
    namespace: Annotated[str, Field(min_length=1)] = "default"
    discovery: Literal["static", "kubernetes"] = "static"
    backends: tuple[str, ...] = ()
    inference_service: str | None = None
    max_pending_streams: Annotated[int, Field(ge=0)] = defaults.MAX_PENDING_STREAMS
    cold_start_timeout_s: Annotated[float, Field(gt=0)] = float(defaults.COLD_START_TIMEOUT_S)
    max_streams_per_connection: Annotated[int, Field(ge=1)] = defaults.MAX_STREAMS_PER_CONNECTION
    backend_capacity: Annotated[int, Field(ge=1)] = 80
    api_key: SecretStr | None = None
    api_key_file: Path | None = None  # re-read when it changes (a mounted Secret rotates)
    idle_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    max_frame_bytes: Annotated[int, Field(ge=1024)] = MAX_BODY_BYTES
    header_timeout_s: Annotated[float, Field(gt=0)] = HEADER_TIMEOUT_S
    body_timeout_s: Annotated[float, Field(gt=0)] = BODY_TIMEOUT_S
    keepalive_timeout_s: Annotated[float, Field(gt=0)] = KEEPALIVE_TIMEOUT_S
    heartbeat_s: Annotated[float, Field(gt=0)] = 20.0
    probe_interval_s: Annotated[float, Field(gt=0)] = 1.0
    backend_connect_timeout_s: Annotated[float, Field(gt=0)] = DEFAULT_BACKEND_CONNECT_TIMEOUT_S
    backend_read_timeout_s: Annotated[float, Field(gt=0)] = DEFAULT_BACKEND_READ_TIMEOUT_S
    shutdown_drain_s: Annotated[float, Field(ge=0)] = GATEWAY_SHUTDOWN_DRAIN_S
    kubeconfig: Path | None = None  # None: the pod's service account (in-cluster)
    backend_address_map: tuple[AddressMapping, ...] = ()
    # Browser origins (scheme://host[:port]) besides the gateway's own page that may call it;
    # `*` allows any. Requests without an Origin header are not affected.
    allowed_origins: tuple[str, ...] = ()
    # Resumable streams (PROTOCOL.md): how long one keeps generating after its client left,
    # and how many token events it keeps for a resume.
    resume_window_s: Annotated[float, Field(gt=0)] = defaults.RESUME_WINDOW_S
    resume_tail_events: Annotated[int, Field(ge=1)] = defaults.RESUME_TAIL_EVENTS
    # Events a client may fall behind on a stream before it counts as a slow consumer.
    client_backlog_events: Annotated[int, Field(ge=1)] = defaults.CLIENT_BACKLOG_EVENTS
    # ... or how long one write to it may stay stuck before it does.
    client_stall_limit_s: Annotated[float, Field(gt=0)] = defaults.CLIENT_STALL_LIMIT_S
    client_send_buffer_bytes: Annotated[int, Field(ge=0)] = defaults.CLIENT_SEND_BUFFER_BYTES
    # Other replicas of this gateway, asked for a stream a resume names that is not here;
    # with kubernetes discovery they are found from the gateway's own Service when empty.
    peers: tuple[str, ...] = ()
    gateway_service: str | None = None

    @model_validator(mode="after")
    def _backends_match_discovery(self) -> GatewayConfig:
        for url in self.backends:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend {url!r} must be an http:// or https:// URL")
        for url in self.peers:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"peer {url!r} must be an http:// or https:// URL")
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
    def own_service(self) -> str:
        """The Service in front of this gateway's replicas (its peers for resumes)."""
        return self.gateway_service or f"{self.endpoint}-gateway"

    @property
    def service_name(self) -> str:
        """The Service whose EndpointSlices list the inference pods."""
        return self.inference_service or f"{self.endpoint}-inference"
