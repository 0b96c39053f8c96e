"""The LLMEndpoint resource's names, shared by the operator (which defines and watches it), the
gateway and the tests: one spelling of each. (The wake signal is a Lease: `llmstream/wake.py`.)

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
