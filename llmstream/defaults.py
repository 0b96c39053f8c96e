"""Defaults that more than one place states: the inference server's CLI and engine, the
gateway's CLI and config, and the LLMEndpoint spec (whose CRD copy a test compares). Each of
them reads its default from here."""

from __future__ import annotations

from typing import Final

# The inference engine: scheduling limits and sampling defaults.
MAX_BATCH_SIZE: Final = 16
MAX_WAITING: Final = 64
MAX_NEW_TOKENS_LIMIT: Final = 1024
PREFILL_CHUNK_TOKENS: Final = 256
DEFAULT_MAX_NEW_TOKENS: Final = 256
DEFAULT_TEMPERATURE: Final = 0.7
DEFAULT_TOP_P: Final = 0.95

# The gateway: holding streams at zero, and WebSocket multiplexing.
MAX_PENDING_STREAMS: Final = 100
COLD_START_TIMEOUT_S: Final = 600
MAX_STREAMS_PER_CONNECTION: Final = 8

# The gateway: resumable streams (how long one outlives its client, how many token events it
# keeps) and how far a client may fall behind before it counts as a slow consumer.
RESUME_WINDOW_S: Final = 30
RESUME_TAIL_EVENTS: Final = 4096
CLIENT_BACKLOG_EVENTS: Final = 512
# ... or how long one write to it may stay stuck (its socket full: it stopped reading).
CLIENT_STALL_LIMIT_S: Final = 10.0
# The kernel's send buffer of a client connection, set by the gateway: left to autotune, Linux
# lets one client that stopped reading hold 4 MB there before any write waits (the kernel
# doubles what is asked). Ample for token streams: 128 KiB per round trip.
CLIENT_SEND_BUFFER_BYTES: Final = 128 * 1024
