"""What the end-to-end fuzz tests run against: the two server processes and their limits
(shared by the fixtures that start them and the tests that probe those limits)."""

from __future__ import annotations

from dataclasses import dataclass

from servers import GatewayProcess, InferenceProcess

# Requests whose body says nothing about length generate this many tokens: a fuzzed body that
# happens to be valid costs little, while the canary still fits under the server's limit.
DEFAULT_NEW_TOKENS = 16
# The largest body and frame both servers take: small, so "too large" is cheap to send.
MAX_BODY_BYTES = 65536


@dataclass
class Servers:
    """A real inference server and a real gateway in front of it, on loopback."""

    inference: InferenceProcess
    gateway: GatewayProcess

    @property
    def inference_port(self) -> int:
        return int(self.inference.url.rsplit(":", 1)[1])
