"""The gateway's aiohttp application: `create_app(config)` wires the pieces; `serve` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.resources
import logging
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from llmstream.loadreport import BackendLoad, LoadReport
from llmstream.wire import BACKEND_POOL_IDLE_S, ErrorCode

from .activator import Activator, NoWaker, Waker
from .auth import RotatingKey, key_accepted, origin_allowed, presented_key, redact_query
from .backends import BackendSet
from .config import INFERENCE_PORT_NAME, GatewayConfig
from .discovery import StaticDiscovery
from .http_api import (
    SseStreams,
    error_response,
    expect_continue,
    generate_handler,
    stream_events_handler,
)
from .metrics import GatewayMetrics
from .openai_api import ModelCatalog, completions_handler
from .outlet import LiveStream
from .peers import PEER_HEADER, PeerUrls, kubernetes_peers, static_peers, stream_from_peers
from .resumable import Resumables, principal_of
from .slowpeers import SlowPeerRunner
from .streamlist import stream_list
from .streams import StreamRunner
from .ws import Connections, serve_websocket

log = logging.getLogger("llmstream.gateway")
LISTEN_BACKLOG = 4096
# Paths that never need the API key: probes, metrics, the page (its script sends the key) and
# the load report, which tells what /metrics tells; the operator's autoscaler reads it with no
# key, so an endpoint with `apiKeySecretRef` still scales on load and to zero.
OPEN_PATHS = frozenset({"/", "/health", "/healthz", "/readyz", "/metrics", "/v1/load"})


class Gateway:
    """Everything one gateway instance owns. Built by `create_app`; tests reach it through
    `app[GATEWAY]`."""

    def __init__(
        self,
        config: GatewayConfig,
        waker: Waker | None = None,
        rng: random.Random | None = None,
        kube_configuration: Any = None,
    ) -> None:
        self.config = config
        self.metrics = GatewayMetrics(config.endpoint)
        self.backends = BackendSet(capacity=config.backend_capacity)
        self.kube_configuration = kube_configuration
        self.waker = waker or self._default_waker()
        self.connections = Connections()
        self.resumables = Resumables(config.resume_window_s)
        self.peers: PeerUrls | None = None
        self.activator = Activator(
            self.backends,
            max_pending=config.max_pending_streams,
            cold_start_timeout_s=config.cold_start_timeout_s,
            waker=self.waker,
            rng=rng or random.Random(),
        )
        self.metrics.track_pending(lambda: self.activator.pending)
        self._session: aiohttp.ClientSession | None = None
        self._runner: StreamRunner | None = None
        self._catalog: ModelCatalog | None = None
        self.api_key = config.api_key.get_secret_value() if config.api_key else None
        # KeyFileError (naming the file) when the key file cannot be read at start-up.
        self._key_file = RotatingKey(config.api_key_file) if config.api_key_file else None

    def _default_waker(self) -> Waker:
        if self.config.discovery != "kubernetes":
            return NoWaker()
        from .k8s import KubernetesWaker

        return KubernetesWaker(self._kube(), self.config.namespace, self.config.endpoint)

    def _kube(self) -> Any:
        if self.kube_configuration is None:
            from .k8s import incluster_configuration

            self.kube_configuration = incluster_configuration()
        return self.kube_configuration

    @property
    def runner(self) -> StreamRunner:
        assert self._runner is not None, "the gateway app is not started"
        return self._runner

    async def shut_down(self, app: web.Application) -> None:
        """aiohttp on_shutdown (SIGTERM; the listener is closed by now): drain, then going away
        (`Connections.shut_down`)."""
        await self.connections.shut_down(self.config.shutdown_drain_s)
        await asyncio.gather(*self.resumables.cancel_all(), return_exceptions=True)

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: client session and discovery live as long as the app."""
        connector = aiohttp.TCPConnector(
            limit=0, enable_cleanup_closed=True, keepalive_timeout=BACKEND_POOL_IDLE_S
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.config.backend_connect_timeout_s,
            sock_read=self.config.backend_read_timeout_s,
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        self._runner = StreamRunner(self.activator, self._session, self.metrics)
        self._catalog = ModelCatalog(
            self.backends, self._session, self.config.endpoint, self.config.model_names
        )
        if self.config.peers:
            self.peers = static_peers(self.config.peers)
        elif self.config.discovery == "kubernetes":
            self.peers = kubernetes_peers(
                self._kube(), self.config.namespace, self.config.own_service, INFERENCE_PORT_NAME
            )
        discovery = asyncio.create_task(self._discover(), name="backend-discovery")
        try:
            yield
        finally:
            discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await discovery
            if hasattr(self.waker, "close"):
                await self.waker.close()
            await self._session.close()

    async def _discover(self) -> None:
        if self.config.discovery == "kubernetes":
            from .k8s import KubernetesDiscovery

            await KubernetesDiscovery(
                self._kube(),
                self.config.namespace,
                self.config.service_name,
                self.backends,
                self.activator.place_waiting,
                self.config.backend_address_map,
            ).run()
        else:
            assert self._session is not None
            await StaticDiscovery(
                self.config.backends,
                self.backends,
                self._session,
                self.activator.place_waiting,
                self.config.probe_interval_s,
            ).run()

    def authorized(self, request: BaseRequest) -> bool:
        """Whether the request carries a configured API key (always true without one)."""
        expected = self._key_file.keys() if self._key_file else self.api_key
        return key_accepted(expected, presented_key(request.headers, request.query))

    def principal(self, request: BaseRequest) -> str:
        """Who the (authorized) request acts for: resumable streams resume only for it."""
        if self._key_file is None and self.api_key is None:
            return ""
        return principal_of(presented_key(request.headers, request.query))

    # --- handlers -------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        return await serve_websocket(
            request,
            self.runner,
            self.config,
            self.metrics,
            self.authorized(request),
            self.connections,
            self.resumables,
            self.principal(request),
            self.elsewhere(request),
        )

    def sse_streams(self, request: web.Request) -> SseStreams:
        return SseStreams(
            self.runner,
            self.resumables,
            self.config.body_timeout_s,
            self.config.client_backlog_events,
            self.config.resume_tail_events,
            self.config.client_stall_limit_s,
            self.config.client_send_buffer_bytes,
            self.elsewhere(request),
        )

    def elsewhere(
        self, request: web.Request
    ) -> Callable[[str, int], Awaitable[LiveStream | None]] | None:
        """How a resume this replica cannot serve asks its peers (None: it must not, being a
        peer's request itself, or there are no peers)."""
        if self.peers is None or PEER_HEADER in request.headers:
            return None
        peers, session = self.peers, self._session
        assert session is not None

        async def find(stream_id: str, after: int) -> LiveStream | None:
            return await stream_from_peers(
                session, peers, stream_id, after, request.headers, request.query
            )

        return find

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await generate_handler(self.sse_streams(request), self.principal(request))(request)

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        handler = stream_events_handler(self.sse_streams(request), self.principal(request))
        return await handler(request)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        handle = completions_handler(self.runner, "chat", self.catalog, self.config.body_timeout_s)
        return await handle(request)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        handle = completions_handler(
            self.runner, "completion", self.catalog, self.config.body_timeout_s
        )
        return await handle(request)

    @property
    def catalog(self) -> ModelCatalog:
        assert self._catalog is not None, "the app's cleanup context has not run"
        return self._catalog

    async def models(self, request: web.Request) -> web.StreamResponse:
        return await self.catalog.handle(request)

    async def model(self, request: web.Request) -> web.StreamResponse:
        return await self.catalog.handle_one(request)

    async def load(self, request: web.Request) -> web.StreamResponse:
        """`/v1/load` for the autoscaler: streams on backends, and streams held apart."""
        pending = self.activator.pending
        idle = self.runner.idle_seconds()
        report = LoadReport(
            active_streams=max(0, self.runner.active - pending),
            pending_streams=pending,
            idle_seconds=None if idle is None else round(idle, 3),
            backends=[
                BackendLoad(url=b.url, ready=b.ready, active=b.active, capacity=b.capacity)
                for b in self.backends
            ],
        )
        return web.json_response(report.model_dump(mode="json"))

    async def streams(self, request: web.Request) -> web.StreamResponse:
        """`/v1/streams`: the live streams (behind the API key like the other /v1 routes)."""
        runner = self.runner
        answer = stream_list(
            self.config.endpoint,
            list(runner.live.values()),
            runner.clock(),
            backends=len(self.backends.backends),
            backends_ready=sum(1 for b in self.backends if b.ready),
        )
        return web.json_response(text=answer.model_dump_json())

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """Ready as soon as it serves: at zero backends it still accepts and holds streams."""
        ready = sum(1 for b in self.backends if b.ready)
        return web.json_response({"status": "ready", "backends_ready": ready})

    async def metrics_page(self, request: web.Request) -> web.StreamResponse:
        body, content_type = self.metrics.render(request.headers.get("Accept"))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = importlib.resources.files(__package__).joinpath("static/index.html")
        return web.Response(text=page.read_text(encoding="utf-8"), content_type="text/html")

    @web.middleware
    async def auth_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, request.host, self.config.allowed_origins):
            return error_response(
                ErrorCode.FORBIDDEN,
                f"requests from origin {origin!r} are not allowed here "
                "(the gateway's --allowed-origin lists the pages that may call it)",
            )
        # The WebSocket handler checks the key itself so it can close with 4401.
        if request.path == "/v1/ws" or self.authorized(request):
            return await handler(request)
        return error_response(ErrorCode.UNAUTHORIZED, "missing or wrong API key")


GATEWAY = web.AppKey("gateway", Gateway)


def create_app(
    config: GatewayConfig,
    *,
    waker: Waker | None = None,
    rng: random.Random | None = None,
    kube_configuration: Any = None,
) -> web.Application:
    """A gateway application for `config` (tests pass their own waker, rng or API server)."""
    gateway = Gateway(config, waker=waker, rng=rng, kube_configuration=kube_configuration)
    app = web.Application(
        middlewares=[gateway.auth_middleware], client_max_size=config.max_frame_bytes
    )
    app[GATEWAY] = gateway
    app.cleanup_ctx.append(gateway.lifecycle)
    app.on_shutdown.append(gateway.shut_down)
    routes = [
        ("GET", "/v1/ws", gateway.websocket),
        ("POST", "/v1/generate", gateway.generate),
        ("GET", "/v1/streams/{stream}/events", gateway.stream_events),
        ("POST", "/v1/chat/completions", gateway.chat_completions),
        ("POST", "/v1/completions", gateway.completions),
        ("GET", "/v1/models", gateway.models),
        ("GET", "/v1/models/{model}", gateway.model),
        ("GET", "/v1/load", gateway.load),
        ("GET", "/v1/streams", gateway.streams),
        ("GET", "/healthz", gateway.healthz),
        ("GET", "/health", gateway.healthz),  # vLLM's name, which guidellm probes
        ("GET", "/readyz", gateway.readyz),
        ("GET", "/metrics", gateway.metrics_page),
        ("GET", "/", gateway.index),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler, expect_handler=expect_continue)
        if method == "GET":  # add_get's HEAD twin
            app.router.add_route("HEAD", path, handler, expect_handler=expect_continue)
    return app


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log without the API key (it may ride in the query string)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.3fs',
            request.remote,
            request.method,
            redact_query(request.path_qs),
            response.status,
            time,
        )


def app_runner(app: web.Application, *, shutdown_timeout: float = 60.0) -> web.AppRunner:
    """The runner every gateway uses: handlers are cancelled when their client disconnects
    (so held and streaming requests notice), the access log never shows the API key, and
    slow peers get 408 (`--header-timeout`, see `slowpeers`)."""
    return SlowPeerRunner(
        app,
        header_timeout_s=app[GATEWAY].config.header_timeout_s,
        handler_cancellation=True,
        access_log_class=RedactingAccessLogger,
        keepalive_timeout=app[GATEWAY].config.keepalive_timeout_s,
        shutdown_timeout=shutdown_timeout,
    )


def tune_gc() -> None:
    """Fewer, cheaper garbage collections: what exists after start-up is frozen out of the
    collector, and young collections run every 20k allocations instead of 700. The per-token
    path allocates many short-lived objects; with thousands of live streams the default
    thresholds trigger frequent collections that show up as tail latency."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def serve(config: GatewayConfig, host: str, port: int) -> None:
    """Run the gateway until SIGINT/SIGTERM (uvloop when available)."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    kube_configuration = None
    if config.kubeconfig is not None:
        from .k8s import kubeconfig_configuration

        kube_configuration = asyncio.run(kubeconfig_configuration(config.kubeconfig))
    with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
        loop_runner.run(_serve_until_signalled(config, host, port, kube_configuration))


async def _serve_until_signalled(
    config: GatewayConfig, host: str, port: int, kube_configuration: Any
) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    tune_gc()
    app = create_app(config, kube_configuration=kube_configuration)
    # on_shutdown drains the streams first; this covers HTTP streams (SSE) the same way.
    runner = app_runner(app, shutdown_timeout=config.shutdown_drain_s + 5.0)
    await runner.setup()
    try:
        # Clients reconnecting after a restart arrive in bursts; 128 would drop SYNs.
        site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
        await site.start()
        log.info("serving on %s", site.name)
        await stop.wait()
    finally:
        await runner.cleanup()  # closes the listener, drains (on_shutdown), then cleans up
