"""`llmstream doctor`: judge each link from an LLMEndpoint to its first token (pure: no I/O).

The chain, in order: the resource exists, the operator has observed it, its Deployments exist,
its pods run (or it sleeps at zero replicas), the gateway answers, it serves the model, and a
test prompt streams a first token. Each judge takes objects `doctor_io` already fetched (API
server bodies, HTTP answers, a prompt's timings) and returns one `Link`: fine, or broken with
the fix. `render` prints them; links after the first broken one are skipped, because each link
assumes the ones before it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from . import names
from .podhealth import Blocker, PodView, find_blocker, pod_blocker, pod_view
from .status import deployment_view

RESOURCE: Final = "LLMEndpoint"
OPERATOR: Final = "operator"
DEPLOYMENTS: Final = "Deployments"
PODS: Final = "pods"
GATEWAY: Final = "gateway"
MODEL: Final = "model"
PROMPT: Final = "first token"
LINKS: Final[tuple[str, ...]] = (RESOURCE, OPERATOR, DEPLOYMENTS, PODS, GATEWAY, MODEL, PROMPT)

# Where `helm install` of docs/install.md puts the operator, and its pods' label.
OPERATOR_NAMESPACE: Final = "llmstream-system"
OPERATOR_SELECTOR: Final = f"{names.LABEL_COMPONENT}=operator"
HELM_INSTALL: Final = (
    "helm install llmstream charts/llmstream -n llmstream-system --create-namespace"
)
EXCERPT_CHARS: Final = 60

OK_MARK: Final = "✓"
BROKEN_MARK: Final = "✗"
SKIPPED_MARK: Final = "·"


@dataclass(frozen=True)
class Link:
    """One link of the chain: fine or broken (then with the fix), or not checked."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    notes: tuple[str, ...] = ()  # further lines under the detail (one per pod, ...)
    skipped: bool = False


def passed(name: str, detail: str, notes: Sequence[str] = ()) -> Link:
    """A link that holds."""
    return Link(name, True, detail, notes=tuple(notes))


def broken(name: str, detail: str, fix: str, notes: Sequence[str] = ()) -> Link:
    """A link that is broken, and what to do about it."""
    return Link(name, False, detail, fix, tuple(notes))


def skipped(name: str, why: str = "") -> Link:
    """A link that was not checked (it does not count as broken)."""
    return Link(name, True, why, skipped=True)


def exit_code(links: Iterable[Link]) -> int:
    """0 when every checked link holds, 1 when one is broken."""
    return 0 if all(link.ok for link in links) else 1


def render_link(link: Link) -> str:
    """One link: its mark, name and detail, then its notes and its fix, indented."""
    if link.skipped:
        return f"{SKIPPED_MARK} {link.name}: skipped" + (f" ({link.detail})" if link.detail else "")
    lines = [f"{OK_MARK if link.ok else BROKEN_MARK} {link.name}: {link.detail}"]
    lines.extend(f"    {note}" for note in link.notes)
    if link.fix:
        first, *rest = link.fix.splitlines()
        lines.append(f"  fix: {first}")
        lines.extend(f"       {line}" for line in rest)
    return "\n".join(lines)


def not_reached(links: Sequence[Link]) -> list[Link]:
    """The links of the chain that come after those given (skipped: one before is broken)."""
    seen = {link.name for link in links}
    return [skipped(name) for name in LINKS if name not in seen]


def render(links: Sequence[Link]) -> str:
    """The report: every link up to the first broken one, then the rest as skipped."""
    shown: list[Link] = []
    for link in links:
        shown.append(link)
        if not link.ok:
            break
    return "\n".join(render_link(link) for link in [*shown, *not_reached(shown)])


# -- API answers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An HTTP answer (API server or gateway through the proxy), or why there was none."""

    status: int | None  # None: no answer (connection failed, timed out)
    body: str = ""
    error: str | None = None  # the transport error when status is None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def answer_message(answer: Answer) -> str:
    """What an answer says went wrong: an API server Status's message, a gateway error's
    message (`{"error": {...}}`), the transport error, else the start of the body."""
    if answer.status is None:
        return answer.error or "no answer"
    body = answer.json()
    if isinstance(body, dict):
        if body.get("kind") == "Status" and body.get("message"):
            return str(body["message"])
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            code = f"{error['code']}: " if error.get("code") else ""
            return f"{code}{error['message']}"
    text = " ".join(answer.body.split())
    return text[:200] or f"HTTP {answer.status}"


def refused(name: str, what: str, namespace: str, answer: Answer) -> Link:
    """A link whose objects could not be read (403, an API server that stopped answering)."""
    said = answer_message(answer)
    if answer.status in (401, 403):
        return broken(
            name,
            f"the API server refused to let you read {what} in namespace {namespace}: {said}",
            f"your kubeconfig's user needs get/list on {what} in namespace {namespace} "
            f"(`kubectl auth can-i list {what} -n {namespace}`)",
        )
    status = f"HTTP {answer.status}: " if answer.status is not None else ""
    return broken(
        name,
        f"reading {what} in namespace {namespace} failed: {status}{said}",
        "check that the API server is healthy and reachable (`kubectl get --raw /readyz`), "
        "then run the doctor again",
    )


# -- 1. the resource ---------------------------------------------------------------------------


def judge_resource(
    name: str,
    namespace: str,
    *,
    api_served: bool,
    endpoint: Mapping[str, Any] | None,
    others: Sequence[str] = (),
) -> Link:
    """The LLMEndpoint API is served (its CRD is installed) and the endpoint exists."""
    if not api_served:
        return broken(
            RESOURCE,
            f"the LLMEndpoint API ({names.API_VERSION}) is not served: "
            f"CRD {names.CRD_NAME} is not installed",
            f"install llmstream: `{HELM_INSTALL}` (docs/install.md), or apply the CRD alone: "
            "`kubectl apply -f crds/llmstream.dev_llmendpoints.yaml`",
        )
    if endpoint is None:
        there = ", ".join(sorted(others)) if others else "none"
        return broken(
            RESOURCE,
            f"no LLMEndpoint {name!r} in namespace {namespace} (endpoints there: {there})",
            "check the name and the namespace (-n NAMESPACE); "
            "`kubectl get llmep -A` lists the endpoints of every namespace",
        )
    meta = endpoint.get("metadata") or {}
    source = ((endpoint.get("spec") or {}).get("model") or {}).get("source", "?")
    return passed(
        RESOURCE,
        f"{namespace}/{name} exists (model {source}, generation {meta.get('generation', '?')})",
    )


# -- 2. the operator ---------------------------------------------------------------------------


def operator_log(namespace: str) -> str:
    """Where the operator says what it did (and what it could not do) for `namespace`."""
    return (
        f"its log: `kubectl -n {OPERATOR_NAMESPACE} logs -l {OPERATOR_SELECTOR} --tail=50`; "
        f"started with --namespace, it must list {namespace}"
    )


def operator_fix(namespace: str) -> str:
    """Where to look when the operator does not act on an endpoint."""
    return (
        f"is the operator running? `kubectl -n {OPERATOR_NAMESPACE} get pods "
        f"-l {OPERATOR_SELECTOR}` (installed elsewhere: `kubectl get pods -A -l "
        f"{OPERATOR_SELECTOR}`)\n{operator_log(namespace)}"
    )


def judge_operator(endpoint: Mapping[str, Any]) -> Link:
    """The operator has written a status for the current generation, and the spec is valid."""
    meta = endpoint.get("metadata") or {}
    namespace = str(meta.get("namespace", ""))
    generation = meta.get("generation")
    status = endpoint.get("status") or {}
    observed = status.get("observedGeneration")
    if not status or observed is None:
        return broken(
            OPERATOR,
            "the endpoint has no status: no operator has acted on it",
            operator_fix(namespace),
        )
    if generation is not None and observed != generation:
        return broken(
            OPERATOR,
            f"the operator has observed generation {observed}, not the current {generation}: "
            "it has not acted on the latest spec",
            operator_fix(namespace),
        )
    phase = status.get("phase", "?")
    message = status.get("message") or ""
    if phase == "Failed":
        name = meta.get("name", "")
        reason = status.get("reason") or "Failed"
        return broken(
            OPERATOR,
            f"the operator cannot act on the spec ({reason}): {message}",
            f"correct the field it names (`kubectl -n {namespace} edit llmep {name}`); "
            "the operator tries again when the spec changes",
        )
    # A reason other than the phase (a blocked pod) is explained by a later link, at length.
    reason = status.get("reason")
    said = f" ({reason})" if reason and reason != phase else f": {message}" if message else ""
    return passed(OPERATOR, f"generation {observed} observed; phase {phase}{said}")


# -- 3. the Deployments ------------------------------------------------------------------------


def _replica_failure(body: Mapping[str, Any]) -> str | None:
    """Why the Deployment cannot create pods (a quota, an admission policy), if it cannot."""
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": ")
    return None


def judge_deployments(
    name: str,
    namespace: str,
    inference: Mapping[str, Any] | None,
    gateway: Mapping[str, Any] | None,
) -> Link:
    """Both Deployments exist and can create their pods; their ready counts."""
    found = {names.inference_name(name): inference, names.gateway_name(name): gateway}
    present = {child: body for child, body in found.items() if body is not None}
    missing = [child for child in found if child not in present]
    if missing:
        return broken(
            DEPLOYMENTS,
            f"Deployment {' and '.join(missing)} missing in namespace {namespace}",
            "the operator creates them and says why it could not:\n"
            f"{operator_log(namespace)}\n"
            f"the endpoint's events: `kubectl -n {namespace} describe llmep {name}`",
        )
    counts = []
    for child, body in present.items():
        view = deployment_view(body)
        counts.append(f"{child} {view.ready}/{view.replicas} ready")
        failure = _replica_failure(body)
        if failure:
            return broken(
                DEPLOYMENTS,
                f"{child} cannot create its pods: {failure}",
                f"`kubectl -n {namespace} describe replicaset -l "
                f"{names.LABEL_INSTANCE}={name}`: a ResourceQuota, LimitRange or admission "
                "policy refuses the pod; raise the quota or change the endpoint's resources",
            )
    return passed(DEPLOYMENTS, ", ".join(counts))


# -- 4. the pods -------------------------------------------------------------------------------


def pod_fix(blocker: Blocker, namespace: str, endpoint: str) -> str:
    """What to do about the problem that blocks a pod."""
    logs = f"kubectl -n {namespace} logs {blocker.pod}"
    edit = f"`kubectl -n {namespace} edit llmep {endpoint}`"
    if blocker.reason == "Unschedulable":
        return (
            "no node can take the pod: compare the endpoint's spec.placement (nodeSelector, "
            "tolerations, affinity) and spec.resources with the nodes\n"
            "(`kubectl get nodes --show-labels`; `kubectl describe node NODE` for allocatable "
            f"GPUs and taints), then change the endpoint ({edit}) or add a matching node"
        )
    if blocker.reason == "ImagePullBackOff":
        return (
            "push the image to a registry the nodes can pull from, or load it into the nodes, "
            "and point llmstream at it\n(Helm values imageRegistry / inference.image / "
            "gateway.image, or the endpoint's spec.image): docs/install.md#images"
        )
    if blocker.reason == "ModelLoadFailed":
        return (
            f"correct spec.model.source ({edit}), or provide the model where it points\n"
            f"the whole story is in the pod's log: `{logs} --previous`"
        )
    if blocker.reason == "CrashLoopBackOff":
        return (
            f"read why it stops: `{logs} --previous`\n"
            f"and `kubectl -n {namespace} describe pod {blocker.pod}` (OOMKilled: raise the "
            "memory in spec.resources)"
        )
    return (
        f"`{logs}`: the server started but never answered /readyz\n"
        "a model that loads slowly needs a longer spec.scaling.coldStartTimeoutSeconds"
    )


def _pod_state(body: Mapping[str, Any], view: PodView, blocker: Blocker | None) -> str:
    node = (body.get("spec") or {}).get("nodeName")
    where = f" on node {node}" if node else ""
    if blocker is not None:
        return f"{blocker.reason}{where}"
    if view.deleting:
        return f"terminating{where}"
    if view.ready:
        return f"ready{where}"
    waiting = [c.waiting_reason for c in view.containers if c.waiting_reason]
    if waiting:
        return f"waiting ({', '.join(waiting)}){where}"
    if any(c.started_at is not None for c in view.containers):
        return f"running, not ready yet{where}"
    phase = (body.get("status") or {}).get("phase") or "Pending"
    return f"{phase}{where}"


def _operator_view(status: Mapping[str, Any]) -> str:
    """The endpoint's status.reason and PodsHealthy condition, as the operator wrote them."""
    reason = status.get("reason") or "none"
    healthy = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "PodsHealthy"), None
    )
    if healthy is None:
        return f"the operator says: reason {reason}; no PodsHealthy condition"
    said = f"PodsHealthy {healthy.get('status', '?')} ({healthy.get('reason') or 'no reason'})"
    return f"the operator says: reason {reason}; {said}"


def _component(body: Mapping[str, Any]) -> str:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return str(labels.get(names.LABEL_COMPONENT, "?"))


def judge_pods(
    endpoint: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    now: float,
    *,
    prompt: bool,
) -> Link:
    """The endpoint's pods and why they wait, explained with the operator's own rules
    (podhealth); broken when a blocked component has no ready pod at all."""
    meta = endpoint.get("metadata") or {}
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
    status = endpoint.get("status") or {}
    ordered = sorted(pods, key=lambda p: (_component(p), (p.get("metadata") or {}).get("name")))
    views = [(body, pod_view(body, _component(body))) for body in ordered]
    notes = [
        f"{view.component} pod {view.name}: {_pod_state(body, view, pod_blocker(view, now))}"
        for body, view in views
    ]
    notes.append(_operator_view(status))
    counts = {
        component: (
            sum(1 for _, v in views if v.component == component and v.ready),
            sum(1 for _, v in views if v.component == component and not v.deleting),
        )
        for component in (names.INFERENCE, names.GATEWAY)
    }
    summary = ", ".join(f"{c} {ready}/{total} ready" for c, (ready, total) in counts.items())
    blocker = find_blocker((v for _, v in views), now)
    if blocker is not None and counts.get(blocker.component, (0, 0))[0] == 0:
        detail = f"{blocker.reason}: {blocker.message}"
        return broken(PODS, detail, pod_fix(blocker, namespace, name), notes)
    if blocker is not None:
        return passed(PODS, f"{summary}; but {blocker.reason}: {blocker.message}", notes)
    inference_pods = counts[names.INFERENCE][1]
    if status.get("phase") == "ScaledToZero" and inference_pods == 0:
        wake = "the test prompt below wakes it" if prompt else "the first request wakes it"
        return passed(PODS, f"scaled to zero (no inference pod), {summary}; {wake}", notes)
    return passed(PODS, summary, notes)


# -- 5. the gateway ----------------------------------------------------------------------------


def proxy_path(name: str, namespace: str, path: str) -> str:
    """`path` of the endpoint's gateway Service, through the API server's service proxy."""
    service = f"{names.gateway_name(name)}:{names.PORT_NAME}"
    return f"/api/v1/namespaces/{namespace}/services/{service}/proxy{path}"


def _took(answer: Answer) -> str:
    return f"{answer.seconds * 1000:.0f} ms"


def judge_gateway(name: str, namespace: str, answer: Answer) -> Link:
    """GET /readyz of the gateway Service through the API server's service proxy."""
    service = names.gateway_name(name)
    if answer.ok:
        return passed(
            GATEWAY,
            f"Service {service} answers /readyz through the API server's proxy "
            f"(HTTP {answer.status} in {_took(answer)})",
        )
    said = answer_message(answer)
    logs = (
        f"kubectl -n {namespace} logs -l "
        f"{names.LABEL_INSTANCE}={name},{names.LABEL_COMPONENT}={names.GATEWAY}"
    )
    by_hand = (
        f"`kubectl -n {namespace} port-forward svc/{service} {names.GATEWAY_PORT}` and "
        f"`curl localhost:{names.GATEWAY_PORT}/readyz`"
    )
    if answer.status == 403 and "services/proxy" in said:
        return broken(
            GATEWAY,
            f"you may not use the API server's proxy to Service {service}: {said}",
            f"ask for get/create on services/proxy in namespace {namespace}, or check by hand: "
            f"{by_hand}",
        )
    if "no endpoints available" in said:
        return broken(
            GATEWAY,
            f"Service {service} has no ready gateway pod: {said}",
            f"see the pods above; `kubectl -n {namespace} get endpointslices "
            f"-l {names.LABEL_SERVICE_NAME}={service}` and `{logs}`",
        )
    if answer.status is None:
        return broken(
            GATEWAY,
            f"no answer through the API server's proxy: {said}",
            f"check by hand: {by_hand}; `{logs}`",
        )
    return broken(
        GATEWAY,
        f"the API server could not reach the gateway (HTTP {answer.status}): {said}",
        "the API server's proxy dials the gateway pod's address: is the gateway running and "
        f"listening on port {names.GATEWAY_PORT} (`{logs}`)?\n"
        "where the API server cannot reach pod addresses (some managed control planes, "
        f"NetworkPolicies), check by hand: {by_hand}",
    )


# -- 6. the model ------------------------------------------------------------------------------


def api_key_ref(endpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Secret key holding the gateway's API key (spec.gateway.apiKeySecretRef), if any."""
    ref = ((endpoint.get("spec") or {}).get("gateway") or {}).get("apiKeySecretRef")
    return ref if isinstance(ref, Mapping) and ref else None


def key_fix(endpoint: Mapping[str, Any]) -> str:
    """How to give the doctor the gateway's API key."""
    namespace = (endpoint.get("metadata") or {}).get("namespace", "")
    ref = api_key_ref(endpoint) or {}
    secret, key = ref.get("name", "SECRET"), ref.get("key", "KEY")
    return (
        "pass --api-key KEY or set $LLMSTREAM_API_KEY; the key is in Secret "
        f"{secret}: `kubectl -n {namespace} get secret {secret} "
        f"-o jsonpath='{{.data.{key}}}' | base64 -d`"
    )


def judge_key(endpoint: Mapping[str, Any], have_key: bool) -> Link | None:
    """Broken at the model link when the gateway requires an API key and none was given."""
    ref = api_key_ref(endpoint)
    if ref is None or have_key:
        return None
    return broken(
        MODEL,
        "the gateway requires an API key (spec.gateway.apiKeySecretRef: Secret "
        f"{ref.get('name')}, key {ref.get('key')}) and none was given: the model and the test "
        "prompt need one",
        key_fix(endpoint),
    )


def _loaded(status: Mapping[str, Any]) -> str:
    ready = status.get("readyReplicas") or 0
    if ready:
        return f"loaded on {ready} inference replica(s)"
    if status.get("phase") == "ScaledToZero":
        return "no replica now (scaled to zero): a request loads it"
    desired = status.get("desiredReplicas")
    return f"not loaded yet: 0/{desired if desired is not None else '?'} replicas ready"


def judge_models(endpoint: Mapping[str, Any], answer: Answer) -> Link:
    """GET /v1/models through the proxy: the names the gateway serves."""
    if answer.status == 401:
        return broken(
            MODEL,
            f"the gateway refused the API key: {answer_message(answer)}",
            key_fix(endpoint),
        )
    body = answer.json() if answer.ok else None
    served = [
        str(card.get("id"))
        for card in (body.get("data") if isinstance(body, dict) else None) or []
        if isinstance(card, dict) and card.get("id")
    ]
    if not served:
        said = answer_message(answer) if not answer.ok else "an empty model list"
        return broken(
            MODEL,
            f"GET /v1/models through the proxy gave {said}",
            "the gateway answers /readyz but not /v1/models: read its log "
            f"(`kubectl -n {(endpoint.get('metadata') or {}).get('namespace', '')} logs -l "
            f"{names.LABEL_INSTANCE}={(endpoint.get('metadata') or {}).get('name', '')},"
            f"{names.LABEL_COMPONENT}={names.GATEWAY}`)",
        )
    status = endpoint.get("status") or {}
    return passed(MODEL, f"serves {', '.join(served)}; {_loaded(status)}")


# -- 7. the test prompt ------------------------------------------------------------------------


class SseReader:
    """Server-sent events, fed one line at a time (comments and ids are ignored)."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        """The (event, data) that `line` completes, if it completes one (a blank line)."""
        if not line:
            event, data = self._event, self._data
            self._event, self._data = "message", []
            return (event, "\n".join(data)) if data else None
        if not line.startswith(":"):
            field, _, value = line.partition(":")
            if field == "event":
                self._event = value.removeprefix(" ")
            elif field == "data":
                self._data.append(value.removeprefix(" "))
        return None


@dataclass(frozen=True)
class PromptOutcome:
    """What one streamed test prompt did, timed from the moment it was sent."""

    ttft_s: float | None = None
    total_s: float | None = None
    tokens: int = 0
    text: str = ""
    held: str | None = None  # the gateway's `queued` reason, if it held the stream
    position: int | None = None  # and the stream's place in its queue
    finish_reason: str | None = None
    status: int | None = None  # HTTP status of an answer that was not a stream
    error: str | None = None  # an `error` event, an HTTP error, or the transport error
    timed_out: bool = False

    @property
    def finished(self) -> bool:
        """The stream is over (its `done` or `error` event came)."""
        return self.total_s is not None


def record(outcome: PromptOutcome, event: str, data: str, at: float) -> PromptOutcome:
    """The outcome after one event of the gateway's native SSE stream, `at` s after sending."""
    try:
        frame = json.loads(data)
    except ValueError:
        frame = None
    if not isinstance(frame, dict):
        frame = {}
    if event == "queued":
        position = frame.get("position")
        return replace(
            outcome,
            held=str(frame.get("reason") or "queued"),
            position=position if isinstance(position, int) else None,
        )
    if event == "token":
        return replace(
            outcome,
            ttft_s=at if outcome.ttft_s is None else outcome.ttft_s,
            tokens=outcome.tokens + 1,
            text=outcome.text + str(frame.get("text") or ""),
        )
    if event == "done":
        usage = frame.get("usage") or {}
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return replace(
            outcome,
            total_s=at,
            tokens=tokens if isinstance(tokens, int) else outcome.tokens,
            finish_reason=frame.get("finish_reason"),
        )
    if event == "error":
        code = frame.get("code")
        message = frame.get("message") or data
        return replace(outcome, total_s=at, error=f"{code}: {message}" if code else message)
    return outcome


def _excerpt(text: str) -> str:
    cut = text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
    return repr(cut)


def judge_prompt(endpoint: Mapping[str, Any], outcome: PromptOutcome, timeout: float) -> Link:
    """One short streamed request through the proxy: time to first token, and in all."""
    meta = endpoint.get("metadata") or {}
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
    pods = f"kubectl -n {namespace} get pods -l {names.LABEL_INSTANCE}={name}"
    if outcome.status == 401:
        return broken(
            PROMPT, f"the gateway refused the API key: {outcome.error}", key_fix(endpoint)
        )
    if outcome.timed_out:
        waited = f", held by the gateway ({outcome.held})" if outcome.held else ""
        got = "no token" if outcome.ttft_s is None else "no end of the answer"
        return broken(
            PROMPT,
            f"{got} within --timeout {timeout:g} s{waited}",
            f"watch the pods start (`{pods} -w`, the pods link above) and run the doctor again "
            "with a longer --timeout; a cold start includes pulling the image and loading the "
            "model",
        )
    if outcome.error is not None or outcome.ttft_s is None:
        said = outcome.error or "the stream ended without a token"
        hint = (
            "the model did not wake in time: see the pods link and the endpoint's "
            f"spec.scaling.coldStartTimeoutSeconds (`{pods}`)"
            if "cold_start_timeout" in said
            else f"read the gateway's and the inference server's logs (`kubectl -n {namespace} "
            f"logs -l {names.LABEL_INSTANCE}={name} --all-containers --prefix`)"
        )
        return broken(PROMPT, f"the test prompt failed: {said}", hint)
    if not outcome.finished:
        return broken(
            PROMPT,
            f"the stream stopped after {outcome.tokens} token(s), before its end",
            f"read the gateway's log (`kubectl -n {namespace} logs -l "
            f"{names.LABEL_INSTANCE}={name},{names.LABEL_COMPONENT}={names.GATEWAY}`)",
        )
    detail = (
        f"{outcome.ttft_s:.2f} s to the first token, {outcome.tokens} token(s) in "
        f"{outcome.total_s:.2f} s: "
        f"{_excerpt(outcome.text)}"
    )
    if outcome.held == "warming":
        detail += f" (woke from zero in {outcome.ttft_s:.1f} s)"
    elif outcome.held:
        detail += f" (held by the gateway: {outcome.held})"
    return passed(PROMPT, detail)


def progress_line(elapsed: float, outcome: PromptOutcome) -> str:
    """A line printed every few seconds while the test prompt waits for its first token."""
    where = f", position {outcome.position}" if outcome.position is not None else ""
    if outcome.held == "warming":
        why = f"the gateway holds it while the model wakes (queued: warming{where})"
    elif outcome.held:
        why = f"the gateway holds it (queued: {outcome.held}{where})"
    else:
        why = "waiting for the first token"
    return f"  … {elapsed:.0f} s: {why}"
