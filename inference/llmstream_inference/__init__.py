"""llmstream inference server: continuous-batching engine, model loading, HTTP API."""
