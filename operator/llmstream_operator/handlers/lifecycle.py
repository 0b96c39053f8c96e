"""The operator's own lifecycle: kopf settings and metrics at startup, credentials, cleanup."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from .. import names
from .context import runtime_of


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Set kopf up for this operator and start serving /metrics."""
    # Keep kopf's bookkeeping in our own annotations, out of the CRD's status schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    # Timers need a finalizer so kopf can stop them before the object goes away.
    settings.persistence.finalizer = names.FINALIZER
    settings.posting.reporting_component = names.MANAGED_BY
    # Log lines become Kubernetes Events only from WARNING up; explicit Normal events
    # (Scaled, Restored) are posted with kopf.event().
    settings.posting.level = logging.WARNING
    runtime = runtime_of(memo)
    if runtime.settings.metrics_port is not None:
        await runtime.start_metrics()


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop serving /metrics."""
    await runtime_of(memo).stop_metrics()


def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf talks to the same API server, with the same credentials, as the operator."""
    access = runtime_of(memo).kube.access
    return kopf.ConnectionInfo(
        server=access.server,
        ca_path=access.ca_path,
        insecure=access.insecure or None,
        scheme="Bearer" if access.bearer_token() else None,
        token=access.bearer_token(),
        certificate_path=access.cert_path,
        private_key_path=access.key_path,
        default_namespace=access.default_namespace,
    )
