"""llmstream gateway: WebSocket/SSE/OpenAI streaming front end with hold-at-zero."""
