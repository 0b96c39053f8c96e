"""Build and run one operator instance: in-process (tests, tools) or from the CLI."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import kopf

from .handlers import build_registry
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
        probe=probe if probe is not None else HttpLoadProbe(timeout=settings.load_timeout),
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
            registry=build_registry(runtime),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=settings.liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await runtime.aclose()
