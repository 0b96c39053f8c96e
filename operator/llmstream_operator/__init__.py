"""llmstream operator: reconciles LLMEndpoint resources and autoscales them."""
