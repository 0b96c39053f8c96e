"""Where the time of a stream from zero replicas goes: a timeline of what the API shows.

A poller (every 0.1 s, through `kubectl proxy`, so it works on kind and on the local tier)
records the wall-clock time at which each step is first seen; the client adds its own two
(request sent, first token). `breakdown` turns that into the table docs/operator.md shows.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx

from llmstream.timefmt import parse_rfc3339
from llmstream.wake import lease_name, requested_at

STEPS = (
    ("request", "the client sends `generate` (zero replicas)"),
    ("wake_requested", "the gateway renewed the wake Lease (its renewTime)"),
    ("replicas_set", "inference Deployment `replicas` ≥ 1 seen"),
    ("pod_scheduled", "a pod bound to a node"),
    ("container_started", "the inference container running"),
    ("server_started", "the server's log: Python and its imports up, HTTP listening"),
    ("model_loaded", "the server's log: model loaded"),
    ("server_ready", "the server's log: warmed up, ready to serve"),
    ("ready", "the pod Ready (startup probe passed)"),
    ("first_token", "the first `token` frame at the client"),
)
POLL_S = 0.1


def parse_time(text: str | None) -> float | None:
    """An RFC 3339 timestamp (as Kubernetes and the gateway write them) as epoch seconds."""
    return parse_rfc3339(text)


def breakdown(seen: dict[str, float]) -> list[dict[str, Any]]:
    """One row per step seen, in order: seconds since the request and since the step before."""
    start = seen["request"]
    rows = []
    previous = start
    for step, meaning in STEPS:
        if step not in seen:
            continue
        at = seen[step]
        rows.append(
            {
                "step": step,
                "meaning": meaning,
                "since_request_s": round(at - start, 3),
                "since_previous_s": round(at - previous, 3),
            }
        )
        previous = at
    return rows


LOG_STEPS = {
    "server_started": "Application startup complete",
    "model_loaded": " loaded in ",
    "server_ready": "ready to serve",
}


def log_steps(log: str) -> dict[str, float]:
    """Steps the inference server logs, from `kubectl logs --timestamps` (RFC 3339 with
    nanoseconds first on each line)."""
    found: dict[str, float] = {}
    for line in log.splitlines():
        stamp, _, message = line.partition(" ")
        for step, marker in LOG_STEPS.items():
            if marker in message and step not in found:
                # Python reads at most microseconds: drop the nanoseconds' last three digits.
                trimmed = re.sub(r"(\.\d{6})\d+", r"\1", stamp)
                when = parse_time(trimmed)
                if when is not None:
                    found[step] = when
    return found


class Timeline:
    """Polls the endpoint, its inference Deployment and pods; `seen` fills as steps happen."""

    def __init__(self, api: str, namespace: str, endpoint: str, deployment: str) -> None:
        self.api = api
        self.namespace = namespace
        self.endpoint = endpoint
        self.deployment = deployment
        self.seen: dict[str, float] = {}
        self.pod: str | None = None
        self._wake_before: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _wake(self, client: httpx.Client) -> float | None:
        """The renewTime of the endpoint's wake Lease (the gateway's clock, microseconds)."""
        path = (
            f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}"
            f"/leases/{lease_name(self.endpoint)}"
        )
        response = client.get(path)
        return requested_at(response.json()) if response.status_code == 200 else None

    def start(self) -> None:
        """Note the wake Lease as it is, mark the request, begin polling."""
        with httpx.Client(base_url=self.api, timeout=5) as client:
            self._wake_before = self._wake(client)
        self.mark("request")
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(timeout=5)

    def mark(self, step: str) -> None:
        """A step the client saw itself (first one wins)."""
        self.seen.setdefault(step, time.time())

    def _run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=5) as client:
            while not self._stop.is_set():
                with suppress(httpx.HTTPError, ValueError, KeyError):
                    self._poll(client)
                time.sleep(POLL_S)

    def _poll(self, client: httpx.Client) -> None:
        now = time.time()
        ns = self.namespace
        wake = self._wake(client)
        if wake is not None and wake != self._wake_before:
            self.seen.setdefault("wake_requested", wake)
        deployment = client.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{self.deployment}")
        if deployment.status_code == 200 and (deployment.json()["spec"].get("replicas") or 0) > 0:
            self.seen.setdefault("replicas_set", now)
        pods = client.get(
            f"/api/v1/namespaces/{ns}/pods",
            params={"labelSelector": "app.kubernetes.io/component=inference"},
        ).json()["items"]
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            self.pod = pod["metadata"]["name"]
            if pod["spec"].get("nodeName"):
                self.seen.setdefault("pod_scheduled", now)
            for status in pod.get("status", {}).get("containerStatuses") or []:
                running = (status.get("state") or {}).get("running")
                if running:
                    started = parse_time(running.get("startedAt"))
                    # startedAt has whole seconds: never earlier than the poll before it.
                    self.seen.setdefault("container_started", max(started or now, now - POLL_S))
            conditions = pod.get("status", {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                self.seen.setdefault("ready", now)


@contextmanager
def kubectl_proxy(kubectl: str, env: dict[str, str]) -> Iterator[str]:
    """`kubectl proxy` on a free loopback port; yields its base URL."""
    process = subprocess.Popen(
        [kubectl, "proxy", "--port=0", "--address=127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if match is None:
            raise RuntimeError(f"kubectl proxy said: {line!r}")
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        process.terminate()
        process.wait(timeout=30)
