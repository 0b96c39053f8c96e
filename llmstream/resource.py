"""The LLMEndpoint resource's names, shared by the operator (which defines and watches it), the
gateway (which wakes it) and the tests: one spelling of each.

The CRD manifest in crds/ and the chart's copy spell them too; tests/chart compares them.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "llmstream.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "LLMEndpoint"
PLURAL: Final = "llmendpoints"
SINGULAR: Final = "llmendpoint"
SHORT_NAME: Final = "llmep"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# The wake signal a gateway patches onto its LLMEndpoint while it holds a stream at zero
# replicas (RFC 3339, whole seconds); the operator scales up when it sees a fresh one.
WAKE_ANNOTATION: Final = f"{GROUP}/wake-requested-at"


def object_path(namespace: str, name: str) -> str:
    """The API path of one LLMEndpoint."""
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
