"""Build and run one operator instance: in-process (tests, tools) or from the CLI."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import kopf

from .handlers import build_registry, operator_memo
from .kube import KubeAccess, KubeClient
from .loadprobe import HttpLoadProbe, LoadProbe
from .runtime import OperatorRuntime, OperatorSettings

StopFlag = asyncio.Event | asyncio.Future[object] | threading.Event


def create_runtime(
    settings: OperatorSettings,
    access: KubeAccess,
    *,
    probe: LoadProbe | None = None,
    clock: Callable[[], float] = time.time,
) -> OperatorRuntime:
    """An operator runtime talking to the API server at `access`."""
    return OperatorRuntime(
        settings=settings,
        kube=KubeClient(access),
        probe=probe
        if probe is not None
        else HttpLoadProbe(timeout=settings.load_timeout, address_map=settings.pod_address_map),
        clock=clock,
    )


async def run_operator(
    runtime: OperatorRuntime,
    *,
    stop_flag: StopFlag | None = None,
    ready_flag: StopFlag | None = None,
) -> None:
    """Run kopf with the operator's handlers until `stop_flag` is set (or a signal arrives).

    Standalone: no peering objects are needed, so the only CRD to install is LLMEndpoint's.
    """
    settings = runtime.settings
    try:
        await kopf.operator(
            registry=build_registry(settings),
            memo=operator_memo(runtime),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=settings.liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await runtime.aclose()


class OperatorThread:
    """The operator on its own thread and event loop.

    kopf cancels every task created in its event loop after it started, so an operator that
    shares a loop with a test harness or another server would cancel them on exit. A thread
    keeps it apart: `start()` returns once kopf is ready, `stop()` returns once it has exited.
    """

    def __init__(self, runtime: OperatorRuntime) -> None:
        self.runtime = runtime
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, name="llmstream-operator", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(run_operator(self.runtime, stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as exc:  # reported by start()/stop() in the caller's thread
            self._errors.append(exc)
            self._ready.set()

    def start(self, timeout: float = 30.0) -> None:
        """Start kopf and wait until it is ready (raise if it failed or took too long)."""
        self._thread.start()
        if not self._ready.wait(timeout) or self._errors:
            self.stop(timeout)
            raise RuntimeError(f"the operator did not start: {self._errors or 'timeout'}")

    def stop(self, timeout: float = 30.0) -> None:
        """Ask kopf to stop and wait for the thread; re-raise what the operator died of."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the operator did not stop within {timeout} s")
        if self._errors:
            raise RuntimeError("the operator failed") from self._errors[0]
