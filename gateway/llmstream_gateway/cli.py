"""`llmstream gateway serve`, `llmstream chat` and `llmstream up`.

Only argparse wiring lives here; each command imports its module when it runs, so the
umbrella CLI stays quick to start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from llmstream import defaults
from llmstream.envargs import add_env_argument, argument_type
from llmstream.openai import parse_model_names
from llmstream.wire import (
    BODY_TIMEOUT_S,
    GATEWAY_SHUTDOWN_DRAIN_S,
    HEADER_TIMEOUT_S,
    KEEPALIVE_TIMEOUT_S,
    MAX_BODY_BYTES,
    SSE_HEARTBEAT_S,
)

from .config import DEFAULT_BACKEND_CONNECT_TIMEOUT_S, DEFAULT_BACKEND_READ_TIMEOUT_S, DEFAULT_PORT


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def register(commands: Any) -> None:
    """Add `gateway`, `chat` and `up` to the umbrella parser."""
    gateway = commands.add_parser("gateway", help="the WebSocket/SSE/OpenAI streaming gateway")
    actions = gateway.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)
    serve = actions.add_parser("serve", help="run the gateway")
    _serve_arguments(serve)
    serve.set_defaults(handler=_serve)

    chat = commands.add_parser("chat", help="interactive streaming chat over the WebSocket API")
    chat.add_argument(
        "url", nargs="?", default=f"ws://127.0.0.1:{DEFAULT_PORT}/v1/ws", help="gateway WS URL"
    )
    chat.add_argument("--prompt", help="ask one question, print the answer, exit")
    chat.add_argument(
        "--passive",
        action="store_true",
        help="run a few built-in questions at once and print TTFT and tokens/s per stream",
    )
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=None)
    add_env_argument(chat, "--api-key", help="API key of the gateway")
    chat.set_defaults(handler=_chat)

    top = commands.add_parser(
        "top",
        help="the gateway's live streams in the terminal, refreshed in place",
        description="Polls the gateway's GET /v1/streams and shows one row per stream. "
        "Keys: q quit, s next sort column, a/t/r/f sort by age/tokens/rate/ttft (again: "
        "invert), i invert the order.",
    )
    top.add_argument(
        "url", nargs="?", default=f"http://127.0.0.1:{DEFAULT_PORT}", help="gateway URL"
    )
    add_env_argument(top, "--api-key", help="API key of the gateway")
    top.add_argument(
        "--interval", type=_positive_float, default=1.0, help="seconds between refreshes"
    )
    top.set_defaults(handler=_top)

    up = commands.add_parser(
        "up", help="run an inference server on the default model and a gateway in front of it"
    )
    up.add_argument("--model", default="builtin://smollm2-135m-instruct")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="gateway port")
    up.add_argument("--inference-port", type=int, default=8000)
    up.set_defaults(handler=_up)


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_env_argument(parser, "--host", default="0.0.0.0", help="listen address")
    add_env_argument(parser, "--port", type=int, default=DEFAULT_PORT, help="listen port")
    parser.add_argument(
        "--backend",
        action="append",
        dest="backend",
        default=None,
        help="static inference backend URL (repeatable) [env LLMSTREAM_BACKENDS, comma-separated]",
    )
    add_env_argument(
        parser,
        "--discovery",
        default="static",
        choices=["static", "kubernetes"],
        help="where backends come from",
    )
    add_env_argument(parser, "--endpoint", default="local", help="LLMEndpoint name")
    add_env_argument(
        parser,
        "--model-names",
        type=argument_type(parse_model_names),
        default=(),
        help="comma-separated names OpenAI requests may give as `model` (the model's own "
        "first, then its aliases); default: those the backends list",
    )
    add_env_argument(
        parser, "--namespace", default=_pod_namespace(), help="namespace of the LLMEndpoint"
    )
    add_env_argument(
        parser,
        "--inference-service",
        default=None,
        help="Service whose EndpointSlices list the backends (<endpoint>-inference)",
    )
    add_env_argument(
        parser,
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig for --discovery kubernetes outside a pod (default: the pod's account)",
    )
    parser.add_argument(
        "--backend-address-map",
        action="append",
        dest="backend_address_map",
        default=None,
        metavar="NETWORK=HOST:PORT",
        help="reach discovered backends in NETWORK at HOST:PORT (repeatable; outside a cluster) "
        "[env LLMSTREAM_BACKEND_ADDRESS_MAP, comma-separated]",
    )
    add_env_argument(
        parser,
        "--max-pending-streams",
        type=int,
        default=defaults.MAX_PENDING_STREAMS,
        help="hold cap",
    )
    add_env_argument(
        parser,
        "--cold-start-timeout",
        type=_positive_float,
        default=float(defaults.COLD_START_TIMEOUT_S),
        help="seconds a stream is held at zero",
    )
    add_env_argument(
        parser,
        "--max-streams-per-connection",
        type=int,
        default=defaults.MAX_STREAMS_PER_CONNECTION,
        help="WebSocket stream cap",
    )
    add_env_argument(
        parser, "--backend-capacity", type=int, default=80, help="streams one backend takes"
    )
    add_env_argument(parser, "--api-key-file", type=Path, default=None, help="file with the key")
    add_env_argument(
        parser,
        "--idle-timeout",
        type=_positive_float,
        default=300.0,
        help="seconds an idle WebSocket (no stream, no frame) stays open",
    )
    add_env_argument(
        parser, "--max-frame-bytes", type=int, default=MAX_BODY_BYTES, help="largest client frame"
    )
    add_env_argument(
        parser,
        "--header-timeout",
        type=_positive_float,
        default=HEADER_TIMEOUT_S,
        help="seconds a request's line and headers may take to arrive (then 408)",
    )
    add_env_argument(
        parser,
        "--body-timeout",
        type=_positive_float,
        default=BODY_TIMEOUT_S,
        help="seconds a request body may take to arrive after its headers (then 408)",
    )
    add_env_argument(
        parser,
        "--keepalive-timeout",
        type=_positive_float,
        default=KEEPALIVE_TIMEOUT_S,
        help="seconds an idle keep-alive HTTP connection stays open",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        dest="allowed_origins",
        default=None,
        metavar="ORIGIN",
        help="a browser origin (https://chat.example.com) besides the gateway's own page that "
        "may call it; * allows any (repeatable) [env LLMSTREAM_ALLOWED_ORIGINS, comma-separated]",
    )
    add_env_argument(
        parser,
        "--backend-connect-timeout",
        type=_positive_float,
        default=DEFAULT_BACKEND_CONNECT_TIMEOUT_S,
        help="seconds to connect to an inference backend",
    )
    add_env_argument(
        parser,
        "--backend-read-timeout",
        type=_positive_float,
        default=DEFAULT_BACKEND_READ_TIMEOUT_S,
        help="longest silence on a backend connection before it counts as hung "
        f"(the inference server sends a heartbeat every {SSE_HEARTBEAT_S:g} s)",
    )
    add_env_argument(
        parser,
        "--shutdown-drain",
        type=float,
        default=GATEWAY_SHUTDOWN_DRAIN_S,
        help="on SIGTERM, seconds running streams may take to finish before each remaining one "
        "gets an error frame and its WebSocket closes with 1001",
    )
    add_env_argument(
        parser,
        "--resume-window",
        type=_positive_float,
        default=float(defaults.RESUME_WINDOW_S),
        help="seconds a resumable stream keeps generating after its client left",
    )
    add_env_argument(
        parser,
        "--resume-tail-events",
        type=int,
        default=defaults.RESUME_TAIL_EVENTS,
        help="token events a resumable stream keeps for a resume",
    )
    add_env_argument(
        parser,
        "--client-backlog-events",
        type=int,
        default=defaults.CLIENT_BACKLOG_EVENTS,
        help="events a client may fall behind on a stream before it is a slow consumer",
    )
    add_env_argument(
        parser,
        "--client-stall-limit",
        type=_positive_float,
        default=defaults.CLIENT_STALL_LIMIT_S,
        help="seconds one write to a client may stay stuck (it stopped reading) before it is a "
        "slow consumer",
    )
    add_env_argument(
        parser,
        "--client-send-buffer",
        type=int,
        default=defaults.CLIENT_SEND_BUFFER_BYTES,
        help="bytes of kernel send buffer per streaming client connection (0: the kernel's "
        "autotuning, which lets a client that stopped reading hold megabytes)",
    )
    parser.add_argument(
        "--peer",
        action="append",
        dest="peers",
        default=None,
        metavar="URL",
        help="another replica of this gateway, asked for streams a resume names that are not "
        "here (repeatable; with kubernetes discovery found from --gateway-service when not "
        "given) [env LLMSTREAM_PEERS, comma-separated]",
    )
    add_env_argument(
        parser,
        "--gateway-service",
        default=None,
        help="the Service in front of this gateway's replicas (default <endpoint>-gateway)",
    )
    add_env_argument(parser, "--log-level", default="INFO", help="logging level")


def _pod_namespace() -> str:
    token = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    try:
        return token.read_text().strip() or "default"
    except OSError:
        return "default"


def _api_key(args: argparse.Namespace) -> str | None:
    """The key from the environment, unless a key file is given (the file wins)."""
    if args.api_key_file is not None:
        return None
    return os.environ.get("LLMSTREAM_API_KEY") or None


def _serve(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError

    from llmstream.addressmap import parse_all

    from .auth import KeyFileError
    from .config import GatewayConfig
    from .server import serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    backends = args.backend or _split_list(os.environ.get("LLMSTREAM_BACKENDS", ""))
    address_map = args.backend_address_map or _split_list(
        os.environ.get("LLMSTREAM_BACKEND_ADDRESS_MAP", "")
    )
    try:
        mappings = parse_all(address_map)
    except ValueError as exc:
        print(f"error: --backend-address-map: {exc}", file=sys.stderr)
        return 2
    try:
        config = GatewayConfig(
            endpoint=args.endpoint,
            model_names=args.model_names,
            namespace=args.namespace,
            discovery=args.discovery,
            backends=tuple(b.rstrip("/") for b in backends),
            inference_service=args.inference_service,
            max_pending_streams=args.max_pending_streams,
            cold_start_timeout_s=args.cold_start_timeout,
            max_streams_per_connection=args.max_streams_per_connection,
            backend_capacity=args.backend_capacity,
            api_key=_api_key(args),
            api_key_file=args.api_key_file,
            idle_timeout_s=args.idle_timeout,
            max_frame_bytes=args.max_frame_bytes,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            keepalive_timeout_s=args.keepalive_timeout,
            backend_connect_timeout_s=args.backend_connect_timeout,
            allowed_origins=tuple(
                o.rstrip("/")
                for o in args.allowed_origins
                or _split_list(os.environ.get("LLMSTREAM_ALLOWED_ORIGINS", ""))
            ),
            backend_read_timeout_s=args.backend_read_timeout,
            shutdown_drain_s=args.shutdown_drain,
            kubeconfig=args.kubeconfig,
            backend_address_map=mappings,
            resume_window_s=args.resume_window,
            resume_tail_events=args.resume_tail_events,
            client_backlog_events=args.client_backlog_events,
            client_stall_limit_s=args.client_stall_limit,
            client_send_buffer_bytes=args.client_send_buffer,
            peers=tuple(args.peers or _split_list(os.environ.get("LLMSTREAM_PEERS", ""))),
            gateway_service=args.gateway_service,
        )
    except ValidationError as exc:
        from llmstream.wire import describe_validation_error

        print(f"error: invalid gateway settings: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    if config.discovery == "static" and not config.backends:
        print("error: give at least one --backend URL (or --discovery kubernetes)", file=sys.stderr)
        return 2
    try:
        serve(config, args.host, args.port)
    except (RuntimeError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .chat import ChatOptions, main

    return main(
        ChatOptions(
            url=args.url,
            api_key=args.api_key,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
        ),
        prompt=args.prompt,
        passive_mode=args.passive,
    )


def _top(args: argparse.Namespace) -> int:
    from .top import run

    return run(args.url, args.api_key, args.interval)


def _up(args: argparse.Namespace) -> int:
    from .up import run_up

    return run_up(args.model, args.host, args.port, args.inference_port)
