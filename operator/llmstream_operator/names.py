"""One place for every name the operator writes: child names, labels, ports, keys.

The resource's own names (group, version, kind, plural) and the wake Lease's name are shared
with the gateway and live in `llmstream/resource.py` and `llmstream/wake.py`; they are
re-exported here so operator code and
its tests keep one import. Other components (the Helm chart, the tests) read these facts from
here instead of spelling them again.
"""

from __future__ import annotations

from typing import Final

from llmstream import __version__
from llmstream import wake as _wake
from llmstream.modelsource import DEFAULT_PVC_ROOT
from llmstream.resource import API_VERSION as API_VERSION
from llmstream.resource import CRD_NAME as CRD_NAME
from llmstream.resource import GROUP as GROUP
from llmstream.resource import KIND as KIND
from llmstream.resource import PLURAL as PLURAL
from llmstream.resource import SHORT_NAME as SHORT_NAME
from llmstream.resource import SINGULAR as SINGULAR
from llmstream.resource import VERSION as VERSION

FIELD_MANAGER: Final = "llmstream-operator"
# kopf's finalizer on LLMEndpoints (it stops the endpoint's autoscaler timer on deletion).
FINALIZER: Final = f"{GROUP}/operator"
MANAGED_BY: Final = "llmstream-operator"
PART_OF: Final = "llmstream"
APP_NAME: Final = "llmstream"

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_VERSION: Final = "app.kubernetes.io/version"
# Set by the EndpointSlice controller on every slice of a Service.
LABEL_SERVICE_NAME: Final = "kubernetes.io/service-name"

INFERENCE: Final = "inference"
GATEWAY: Final = "gateway"
# Pods carrying this label (in any namespace) may reach inference pods directly besides the
# endpoint's own gateway: a Prometheus that scrapes them, a debugging client.
INFERENCE_ACCESS_LABEL: Final = "llmstream.dev/inference-access"

# The operator's own defaults (here, not in runtime.py, so the umbrella CLI can build its
# parser in the inference image, which has none of the operator's dependencies).
DEFAULT_INTERVAL_SECONDS: Final = 2.0
DEFAULT_METRICS_PORT: Final = 9090
DEFAULT_LIVENESS_PORT: Final = 8081

INFERENCE_PORT: Final = 8000
GATEWAY_PORT: Final = 8080
PORT_NAME: Final = "http"

# Kubernetes Service names are DNS-1035 labels (63 characters); the longest suffix is
# "-inference", so endpoint names are capped here and in the CRD's CEL rule.
MAX_ENDPOINT_NAME_LENGTH: Final = 63 - len("-inference")

DEFAULT_INFERENCE_IMAGE: Final = f"llmstream/inference:{__version__}"
DEFAULT_GATEWAY_IMAGE: Final = f"llmstream/gateway:{__version__}"

# Paths inside the inference container (read-only root file system: only these are writable).
CACHE_MOUNT: Final = "/cache"
LLMSTREAM_HOME_PATH: Final = f"{CACHE_MOUNT}/llmstream"
HF_HOME_PATH: Final = f"{CACHE_MOUNT}/huggingface"
TMP_MOUNT: Final = "/tmp"
# The gateway's API key: its Secret mounted as a file, which the kubelet updates in place when
# the Secret changes and the gateway re-reads, so keys rotate without a restart.
API_KEY_VOLUME: Final = "api-key"
API_KEY_MOUNT: Final = "/var/run/secrets/llmstream"
API_KEY_FILE: Final = f"{API_KEY_MOUNT}/api-key"
PVC_ROOT: Final = DEFAULT_PVC_ROOT  # where claims are mounted (the inference side reads it)


def inference_name(endpoint: str) -> str:
    """Deployment and Service of the inference server."""
    return f"{endpoint}-{INFERENCE}"


def gateway_name(endpoint: str) -> str:
    """Deployment, Service, ServiceAccount, Role, RoleBinding and PDB of the gateway."""
    return f"{endpoint}-{GATEWAY}"


# The wake Lease (its component label and name), shared with the gateway.
WAKE: Final = _wake.COMPONENT
wake_name = _wake.lease_name


def selector_labels(endpoint: str, component: str) -> dict[str, str]:
    """The immutable subset of labels used as Deployment and Service selectors."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: endpoint, LABEL_COMPONENT: component}


def labels(endpoint: str, component: str) -> dict[str, str]:
    """Every label a child of `endpoint` carries."""
    return {
        **selector_labels(endpoint, component),
        LABEL_PART_OF: PART_OF,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_VERSION: __version__,
    }


def gateway_url(endpoint: str, namespace: str) -> str:
    """The in-cluster WebSocket URL of an endpoint, as reported in its status."""
    return f"ws://{gateway_name(endpoint)}.{namespace}.svc:{GATEWAY_PORT}/v1/ws"
