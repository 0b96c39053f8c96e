"""`llmstream doctor ENDPOINT`: fetch what each link needs, judge it (doctor.py), print it.

Everything goes to the API server named by the kubeconfig (or the pod's service account),
the gateway included: its Service is reached through the API server's service proxy, so no
port-forward is needed and this process dials no pod or Service address itself. Every request
has a timeout; the test prompt is bounded by --timeout.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import httpx

from . import doctor, names
from .doctor import Answer, Link, PromptOutcome
from .kube import KubeAccess, KubeConfigError, discover_access

API_TIMEOUT_S: Final = 10.0
PROGRESS_S: Final = 5.0
MAX_NEW_TOKENS: Final = 16
API_KEY_ENV: Final = "LLMSTREAM_API_KEY"
# The gateway reads its key from this query parameter too: the API server's proxy consumes
# the Authorization header (it authenticates the caller with it) and never forwards it.
API_KEY_PARAM: Final = "api_key"
DEFAULT_NAMESPACE: Final = "default"


class UsageError(Exception):
    """The command cannot check anything (no cluster access, no such namespace): exit 2."""


@dataclass(frozen=True)
class Options:
    """What `llmstream doctor` was asked."""

    endpoint: str
    timeout: float  # the test prompt's bound, a wake from zero included
    prompt: str | None  # the test prompt's text; None: --no-prompt
    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    api_key: str | None = None


def context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    """The namespace of the kubeconfig context in use, if it names one."""
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
    except (config.ConfigException, OSError, ValueError):
        return None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


class Api:
    """GETs and one streamed POST to the API server; answers, never exceptions."""

    def __init__(self, access: KubeAccess) -> None:
        self.access = access
        self.http = httpx.AsyncClient(
            base_url=access.server, verify=access.ssl_context(), timeout=API_TIMEOUT_S
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    def headers(self) -> dict[str, str]:
        """Accept JSON, with the bearer token when the access uses one."""
        headers = {"Accept": "application/json"}
        token = self.access.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Answer:
        """GET `path`; a transport error or timeout is an Answer without a status."""
        started = time.monotonic()
        try:
            response = await self.http.get(path, params=params, headers=self.headers())
        except httpx.HTTPError as exc:
            return Answer(None, error=_describe(exc), seconds=time.monotonic() - started)
        return Answer(response.status_code, response.text, seconds=time.monotonic() - started)


def _describe(exc: httpx.HTTPError) -> str:
    said = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {API_TIMEOUT_S:.0f} s ({said})"
    return said


def _body(answer: Answer) -> dict[str, Any] | None:
    body = answer.json() if answer.ok else None
    return body if isinstance(body, dict) else None


async def check_access(api: Api, namespace: str) -> None:
    """The API server answers, accepts the credentials, and has the namespace."""
    answer = await api.get(f"/api/v1/namespaces/{namespace}")
    where = f"the API server at {api.access.server}"
    if answer.status is None:
        raise UsageError(f"cannot reach {where}: {answer.error}")
    if answer.status == 401:
        raise UsageError(f"{where} refused the kubeconfig's credentials (401 Unauthorized)")
    if answer.status == 404:
        raise UsageError(
            f"namespace {namespace!r} does not exist ({where}); pick one with -n NAMESPACE"
        )
    # 403: this user may not read namespaces, which tells nothing about the rest.


async def send_prompt(
    api: Api, path: str, text: str, options: Options, print_line: Callable[[str], None]
) -> PromptOutcome:
    """One streamed `POST /v1/generate` of `text` through the proxy, timed; progress every few
    seconds while it waits for its first token; bounded by --timeout."""
    body = {
        "prompt": text,
        "params": {"max_new_tokens": MAX_NEW_TOKENS},
        "stream": True,
    }
    params = {API_KEY_PARAM: options.api_key} if options.api_key else None
    started = time.monotonic()
    outcome = PromptOutcome()

    async def report_progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_S)
            if outcome.ttft_s is None:
                print_line(doctor.progress_line(time.monotonic() - started, outcome))

    ticker = asyncio.create_task(report_progress())
    try:
        async with asyncio.timeout(options.timeout):
            async with api.http.stream(
                "POST",
                path,
                json=body,
                params=params,
                headers=api.headers(),
                timeout=httpx.Timeout(options.timeout, connect=API_TIMEOUT_S),
            ) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    said = doctor.answer_message(Answer(response.status_code, text))
                    return replace(outcome, status=response.status_code, error=said)
                reader = doctor.SseReader()
                async for line in response.aiter_lines():
                    event = reader.feed(line)
                    if event is None:
                        continue
                    outcome = doctor.record(outcome, *event, time.monotonic() - started)
                    if outcome.finished:
                        break
    except TimeoutError:
        return replace(outcome, timed_out=True)
    except httpx.HTTPError as exc:
        return replace(outcome, error=_describe(exc))
    finally:
        ticker.cancel()
    return outcome


async def diagnose(
    api: Api, name: str, namespace: str, options: Options, emit: Callable[[Link], bool]
) -> None:
    """Check the links in order; stop at the first broken one (`emit` says whether it held)."""
    group = f"/apis/{names.API_VERSION}"
    endpoints = f"{group}/namespaces/{namespace}/{names.PLURAL}"

    discovery = await api.get(group)
    if discovery.status not in (200, 404):
        emit(doctor.refused(doctor.RESOURCE, "the llmstream.dev API", namespace, discovery))
        return
    listed = (_body(discovery) or {}).get("resources") or []
    served = any(resource.get("name") == names.PLURAL for resource in listed)
    endpoint: dict[str, Any] | None = None
    others: list[str] = []
    if served:
        got = await api.get(f"{endpoints}/{name}")
        if got.status not in (200, 404):
            emit(doctor.refused(doctor.RESOURCE, names.PLURAL, namespace, got))
            return
        endpoint = _body(got)
        if endpoint is None:
            items = (_body(await api.get(endpoints)) or {}).get("items") or []
            others = [str(item["metadata"]["name"]) for item in items]
    link = doctor.judge_resource(
        name, namespace, api_served=served, endpoint=endpoint, others=others
    )
    if not emit(link) or endpoint is None:
        return
    if not emit(doctor.judge_operator(endpoint)):
        return

    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    found: dict[str, dict[str, Any] | None] = {}
    for child in (names.inference_name(name), names.gateway_name(name)):
        got = await api.get(f"{deployments}/{child}")
        if got.status not in (200, 404):
            emit(doctor.refused(doctor.DEPLOYMENTS, "deployments", namespace, got))
            return
        found[child] = _body(got)
    link = doctor.judge_deployments(
        name, namespace, found[names.inference_name(name)], found[names.gateway_name(name)]
    )
    if not emit(link):
        return

    components = f"{names.INFERENCE},{names.GATEWAY}"
    selector = (
        f"{names.LABEL_NAME}={names.APP_NAME},{names.LABEL_INSTANCE}={name},"
        f"{names.LABEL_COMPONENT} in ({components})"
    )
    got = await api.get(f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector})
    if not got.ok:
        emit(doctor.refused(doctor.PODS, "pods", namespace, got))
        return
    pods = (_body(got) or {}).get("items") or []
    prompt = options.prompt is not None
    if not emit(doctor.judge_pods(endpoint, pods, time.time(), prompt=prompt)):
        return

    readyz = await api.get(doctor.proxy_path(name, namespace, "/readyz"))
    if not emit(doctor.judge_gateway(name, namespace, readyz)):
        return

    missing_key = doctor.judge_key(endpoint, options.api_key is not None)
    if missing_key is not None:
        emit(missing_key)
        return
    params = {API_KEY_PARAM: options.api_key} if options.api_key else None
    models = await api.get(doctor.proxy_path(name, namespace, "/v1/models"), params)
    if not emit(doctor.judge_models(endpoint, models)):
        return

    if options.prompt is None:
        emit(doctor.skipped(doctor.PROMPT, "--no-prompt"))
        return
    path = doctor.proxy_path(name, namespace, "/v1/generate")
    outcome = await send_prompt(api, path, options.prompt, options, _print)
    emit(doctor.judge_prompt(endpoint, outcome, options.timeout))


def _print(line: str) -> None:
    print(line, flush=True)


async def run(options: Options, access: KubeAccess, namespace: str) -> int:
    """Check every link, printing each as it is judged; the exit code."""
    api = Api(access)
    links: list[Link] = []

    def emit(link: Link) -> bool:
        links.append(link)
        _print(doctor.render_link(link))
        return link.ok

    try:
        await check_access(api, namespace)
        _print(f"llmstream doctor: LLMEndpoint {namespace}/{options.endpoint} ({access.server})")
        await diagnose(api, options.endpoint, namespace, options, emit)
    finally:
        await api.aclose()
    for link in doctor.not_reached(links):
        _print(doctor.render_link(link))
    return doctor.exit_code(links)


def main(options: Options) -> int:
    """`llmstream doctor`: 0 when every link holds, 1 when one is broken, 2 when nothing could
    be checked (kubeconfig, API server, namespace)."""
    try:
        access = discover_access(options.kubeconfig, options.context)
    except KubeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    namespace = (
        options.namespace
        or access.default_namespace
        or context_namespace(options.kubeconfig, options.context)
        or DEFAULT_NAMESPACE
    )
    key = options.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        return asyncio.run(run(replace(options, api_key=key), access, namespace))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:  # a CA, client key or token file that cannot be read (ssl errors too)
        print(f"error: cannot use the credentials for {access.server}: {exc}", file=sys.stderr)
    return 2
