"""The LLMEndpoint spec as a pydantic model (the CRD schema's twin; a test keeps them equal).

The API server already enforces the CRD's OpenAPI schema and CEL rules; this model re-checks
the same bounds plus what a schema cannot express (a builtin model name that does not exist,
a malformed Hugging Face repo id), so a spec that slips past the schema ends in a `Failed`
phase with a message naming the field instead of a crash loop.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from llmstream import defaults
from llmstream.modelsource import ModelSource, ModelSourceError, parse_source, served_name
from llmstream.openai import MAX_MODEL_ALIASES, MODEL_NAME_PATTERN
from llmstream.wire import describe_validation_error

# Kubernetes' own patterns (apimachinery), so the CRD rejects what the API server would.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
RESOURCE_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
SOURCE_SCHEMES = ("builtin", "hf", "pvc", "file")

Quantity = int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]
ResourceName = Annotated[str, StringConstraints(max_length=253, pattern=RESOURCE_NAME_PATTERN)]
ResourceList = Annotated[dict[str, Quantity], Field(max_length=16)]
ModelName = Annotated[str, StringConstraints(max_length=128, pattern=MODEL_NAME_PATTERN)]


def _quantities(**values: int | str) -> dict[str, int | str]:
    return dict(values)


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class SecretKeyRef(_Spec):
    """A key inside a Secret of the endpoint's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)]


class ModelSpec(_Spec):
    """Which model to serve and how to load it."""

    source: Annotated[str, Field(min_length=1, max_length=512)]
    revision: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_context_tokens: Annotated[int, Field(ge=16, le=1048576)] | None = None
    hf_token_secret_ref: SecretKeyRef | None = None
    # More names OpenAI requests may give as `model` (its own name always works).
    aliases: Annotated[list[ModelName], Field(max_length=MAX_MODEL_ALIASES)] = Field(
        default_factory=list
    )

    @field_validator("source")
    @classmethod
    def _source_parses(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if "://" not in value or scheme not in SOURCE_SCHEMES:
            raise ValueError(
                f"source {value!r} must start with one of "
                + ", ".join(f"{s}://" for s in SOURCE_SCHEMES)
            )
        try:
            parse_source(value)
        except ModelSourceError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _revision_only_for_hf(self) -> Self:
        parsed = self.parsed_source
        if self.revision is not None:
            if parsed.scheme != "hf":
                raise ValueError("revision applies to hf:// sources only")
            if parsed.revision is not None:
                raise ValueError(
                    "give the revision either in the source (hf://org/name@rev) or in "
                    "model.revision, not both"
                )
        return self

    @property
    def parsed_source(self) -> ModelSource:
        """The source parsed with the inference server's own rules."""
        return parse_source(self.source)

    @property
    def served_names(self) -> list[str]:
        """The model's own name (what the inference server reports), then its aliases."""
        return list(dict.fromkeys([served_name(self.parsed_source), *self.aliases]))

    @property
    def effective_source(self) -> str:
        """The source string handed to the inference server (revision folded in)."""
        if self.revision is not None:
            return f"{self.source}@{self.revision}"
        return self.source


class EngineDefaults(_Spec):
    """Sampling defaults for requests that give none."""

    max_new_tokens: Annotated[int, Field(ge=1, le=1048576)] = defaults.DEFAULT_MAX_NEW_TOKENS
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = defaults.DEFAULT_TEMPERATURE
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = defaults.DEFAULT_TOP_P


class EngineSpec(_Spec):
    """Continuous-batching engine limits of each inference replica."""

    max_batch_size: Annotated[int, Field(ge=1, le=1024)] = defaults.MAX_BATCH_SIZE
    max_waiting: Annotated[int, Field(ge=0, le=100000)] = defaults.MAX_WAITING
    max_new_tokens_limit: Annotated[int, Field(ge=1, le=1048576)] = defaults.MAX_NEW_TOKENS_LIMIT
    defaults: EngineDefaults = EngineDefaults()

    @model_validator(mode="after")
    def _default_within_limit(self) -> Self:
        if self.defaults.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("defaults.maxNewTokens must not exceed maxNewTokensLimit")
        return self


class ResourcesSpec(_Spec):
    """Per-replica compute of the inference pods."""

    gpus: Annotated[int, Field(ge=0, le=16)] = 1
    gpu_resource_name: ResourceName = "nvidia.com/gpu"
    requests: ResourceList = Field(default_factory=lambda: _quantities(cpu="2", memory="8Gi"))
    limits: ResourceList = Field(default_factory=lambda: _quantities(memory="16Gi"))

    @model_validator(mode="after")
    def _gpu_only_through_gpus(self) -> Self:
        for section, values in (("requests", self.requests), ("limits", self.limits)):
            if self.gpu_resource_name in values:
                raise ValueError(
                    f"resources.{section} must not name {self.gpu_resource_name}; "
                    "set resources.gpus instead"
                )
        return self


class Toleration(_Spec):
    """A pod toleration (the Kubernetes core/v1 shape)."""

    key: Annotated[str, Field(max_length=316)] | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: Annotated[str, Field(max_length=63)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class PlacementSpec(_Spec):
    """Where inference pods may run."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = Field(default_factory=list)
    # Passed to the pod unchanged; the API server validates it when the Deployment is applied.
    affinity: dict[str, Any] = Field(default_factory=dict)
    priority_class_name: Annotated[str, Field(max_length=253)] = ""


class ScalingSpec(_Spec):
    """Autoscaling bounds and timings (see docs/operator.md for the policy)."""

    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 0
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 4
    target_active_streams: Annotated[int, Field(ge=1, le=100000)] = 8
    scale_down_delay_seconds: Annotated[int, Field(ge=0, le=86400)] = 60
    idle_seconds: Annotated[int, Field(ge=1, le=604800)] = 300
    cold_start_timeout_seconds: Annotated[int, Field(ge=1, le=86400)] = (
        defaults.COLD_START_TIMEOUT_S
    )
    max_pending_streams: Annotated[int, Field(ge=0, le=100000)] = defaults.MAX_PENDING_STREAMS

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError("scaling.minReplicas must be <= scaling.maxReplicas")
        return self


class GatewaySpec(_Spec):
    """The WebSocket gateway in front of the inference pods."""

    replicas: Annotated[int, Field(ge=1, le=100)] = 1
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    api_key_secret_ref: SecretKeyRef | None = None
    max_streams_per_connection: Annotated[int, Field(ge=1, le=1024)] = (
        defaults.MAX_STREAMS_PER_CONNECTION
    )
    resume_window_seconds: Annotated[int, Field(ge=1, le=3600)] = defaults.RESUME_WINDOW_S


class EnvVar(_Spec):
    """An extra environment variable of the inference container (core/v1 EnvVar shape)."""

    name: Annotated[str, Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)]
    value: str | None = None
    value_from: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _value_or_value_from(self) -> Self:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: set value or valueFrom, not both")
        return self


class LLMEndpointSpec(_Spec):
    """`spec` of an LLMEndpoint."""

    model: ModelSpec
    engine: EngineSpec = EngineSpec()
    resources: ResourcesSpec = ResourcesSpec()
    placement: PlacementSpec = PlacementSpec()
    scaling: ScalingSpec = ScalingSpec()
    gateway: GatewaySpec = GatewaySpec()
    image: Annotated[str, Field(max_length=1024)] = ""
    env: Annotated[list[EnvVar], Field(max_length=128)] = Field(default_factory=list)


class SpecError(ValueError):
    """A spec the operator cannot act on; the message names every offending field."""


def parse_spec(raw: Any) -> LLMEndpointSpec:
    """Validate a raw `spec` mapping; raise SpecError with one line per problem."""
    try:
        return LLMEndpointSpec.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc, root="spec")) from None
