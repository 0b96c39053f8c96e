"""Thin Kubernetes I/O: where the API server is, how to authenticate, and the few calls made.

The operator's own writes are server-side apply (one field manager), a status patch done by
kopf, and nothing else. kopf logs in with the same credentials (`connection_info`), so the
operator talks to exactly one API server, whether it runs in a pod, against a kubeconfig, or
in a test against a mock server.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llmstream.wake import LEASE_KIND, LEASE_PLURAL

from . import names

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# kind -> plural, for every kind the operator writes or reads by name.
PLURALS: dict[str, str] = {
    "Deployment": "deployments",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
    LEASE_KIND: LEASE_PLURAL,
    names.KIND: names.PLURAL,
}


class KubeApiError(Exception):
    """A non-success answer of the API server, with its status code and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def is_permanent(self) -> bool:
        """Retrying the same request cannot succeed (invalid object), unlike 403/409/5xx."""
        return self.status in (400, 422)


class KubeConfigError(Exception):
    """No usable cluster access; the message says what was tried."""


@dataclass(frozen=True)
class KubeAccess:
    """Where the API server is and how to authenticate to it."""

    server: str
    ca_path: str | None = None
    insecure: bool = False
    token: str | None = None
    token_path: str | None = None  # re-read per request: projected tokens rotate
    cert_path: str | None = None
    key_path: str | None = None
    default_namespace: str | None = None

    def bearer_token(self) -> str | None:
        """The current bearer token, if this access uses one."""
        if self.token_path:
            return Path(self.token_path).read_text().strip()
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        """Verification settings for HTTPS servers (False when verification is off)."""
        if not self.server.startswith("https"):
            return True
        if self.insecure:
            return False
        context = ssl.create_default_context(cafile=self.ca_path)
        if self.cert_path and self.key_path:
            context.load_cert_chain(self.cert_path, self.key_path)
        return context


def access_in_cluster() -> KubeAccess:
    """The pod's service account (KUBERNETES_SERVICE_HOST and the mounted token)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token = SERVICE_ACCOUNT_DIR / "token"
    if not host or not token.is_file():
        raise KubeConfigError("not running in a pod: KUBERNETES_SERVICE_HOST or token missing")
    namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
    return KubeAccess(
        server=f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}",
        ca_path=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
        token_path=str(token),
        default_namespace=namespace_file.read_text().strip() if namespace_file.is_file() else None,
    )


def access_from_kubeconfig(path: str | None = None, context: str | None = None) -> KubeAccess:
    """Access from a kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except (config.ConfigException, OSError) as exc:
        shown = path or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise KubeConfigError(f"cannot use kubeconfig {shown}: {exc}") from exc
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    token = header.split(" ", 1)[-1] if header else None
    return KubeAccess(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        token=token,
        cert_path=configuration.cert_file,
        key_path=configuration.key_file,
    )


def discover_access(kubeconfig: str | None = None, context: str | None = None) -> KubeAccess:
    """An explicit kubeconfig wins; else the pod's service account; else the default kubeconfig."""
    if kubeconfig is None and context is None:
        try:
            return access_in_cluster()
        except KubeConfigError:
            pass
    return access_from_kubeconfig(kubeconfig, context)


def resource_path(
    api_version: str,
    kind: str,
    namespace: str,
    name: str | None = None,
) -> str:
    """REST path of a namespaced object (or its collection when `name` is None)."""
    try:
        plural = PLURALS[kind]
    except KeyError:
        raise ValueError(f"the operator does not manage kind {kind!r}") from None
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    if name is not None:
        path += f"/{name}"
    return path


class KubeClient:
    """The operator's few API calls, over one pooled HTTP client."""

    def __init__(self, access: KubeAccess, *, timeout: float = 10.0) -> None:
        self.access = access
        self._http = httpx.AsyncClient(
            base_url=access.server, verify=access.ssl_context(), timeout=timeout
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.access.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    @staticmethod
    def _result(response: httpx.Response) -> dict[str, Any]:
        if response.is_success:
            body: dict[str, Any] = response.json() if response.content else {}
            return body
        try:
            status = response.json()
            reason, message = status.get("reason", ""), status.get("message", response.text)
        except ValueError:
            reason, message = response.reason_phrase, response.text
        raise KubeApiError(response.status_code, str(reason), str(message))

    async def apply(
        self, manifest: dict[str, Any], *, field_manager: str = names.FIELD_MANAGER
    ) -> dict[str, Any]:
        """Server-side apply: create the object or bring the fields we own back to `manifest`.

        `force` takes over fields another manager changed (that is drift to correct).
        """
        meta = manifest["metadata"]
        path = resource_path(
            manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]
        )
        response = await self._http.patch(
            path,
            params={"fieldManager": field_manager, "force": "true"},
            # JSON is YAML, and the API server accepts it as an apply patch.
            content=json.dumps(manifest),
            headers=self._headers("application/apply-patch+yaml"),
        )
        return self._result(response)
