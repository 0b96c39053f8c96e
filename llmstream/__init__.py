"""llmstream: LLM serving on Kubernetes with token streaming."""

__version__ = "0.1.0"
