"""`llmstream model ...` and `llmstream inference ...` sub-commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llmstream import defaults
from llmstream.envargs import add_env_argument, argument_type, parse_bool
from llmstream.openai import parse_model_names
from llmstream.wire import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, KEEPALIVE_TIMEOUT_S, MAX_BODY_BYTES


def register(commands: Any) -> None:
    """Add the `model` and `inference` command groups to the umbrella parser."""
    model = commands.add_parser("model", help="provision and inspect models")
    model_cmds = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    pull = model_cmds.add_parser(
        "pull-default",
        help="provision the embedded default model (SmolLM2-135M-Instruct) into the cache",
    )
    pull.set_defaults(handler=_pull_default)

    tiny = model_cmds.add_parser(
        "make-tiny", help="write the deterministic tiny random-weight test model to PATH"
    )
    tiny.add_argument("path", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=_make_tiny)

    resolve = model_cmds.add_parser("resolve", help="print the local folder of a model source")
    resolve.add_argument("source")
    resolve.set_defaults(handler=_resolve)

    inference = commands.add_parser("inference", help="run the streaming inference server")
    inference_cmds = inference.add_subparsers(
        dest="inference_command", metavar="ACTION", required=True
    )
    serve = inference_cmds.add_parser(
        "serve",
        help="serve a model over HTTP (native SSE + OpenAI-compatible API)",
        description="Every flag can also be set with LLMSTREAM_<FLAG> (see docs/configuration.md).",
    )
    _serve_arguments(serve)
    serve.set_defaults(handler=_serve)


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    from llmstream.modelsource import DEFAULT_SOURCE

    add_env_argument(p, "--model", default=DEFAULT_SOURCE, help="model source")
    add_env_argument(p, "--model-name", default="", help="name reported by the API")
    add_env_argument(
        p,
        "--model-aliases",
        type=argument_type(parse_model_names),
        default=(),
        help="comma-separated names OpenAI requests may also give as `model`",
    )
    add_env_argument(p, "--host", default="0.0.0.0", help="listen address")
    add_env_argument(p, "--port", type=int, default=8000, help="listen port")
    add_env_argument(
        p,
        "--device",
        default="auto",
        help="auto | cpu | cuda[:n]; auto and cuda split the model over every visible GPU",
    )
    add_env_argument(p, "--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    add_env_argument(p, "--threads", type=int, default=0, help="torch CPU threads (0: default)")
    add_env_argument(
        p, "--max-batch-size", type=int, default=defaults.MAX_BATCH_SIZE, help="sequences per step"
    )
    add_env_argument(
        p, "--max-waiting", type=int, default=defaults.MAX_WAITING, help="queued before 429"
    )
    add_env_argument(
        p,
        "--max-new-tokens-limit",
        type=int,
        default=defaults.MAX_NEW_TOKENS_LIMIT,
        help="cap per request",
    )
    add_env_argument(
        p, "--max-context-tokens", type=int, default=0, help="prompt+output cap (0: model's)"
    )
    add_env_argument(
        p,
        "--prefill-chunk-tokens",
        type=int,
        default=defaults.PREFILL_CHUNK_TOKENS,
        help="prefill per step",
    )
    add_env_argument(
        p, "--default-max-new-tokens", type=int, default=defaults.DEFAULT_MAX_NEW_TOKENS, help=""
    )
    add_env_argument(
        p, "--default-temperature", type=float, default=defaults.DEFAULT_TEMPERATURE, help=""
    )
    add_env_argument(p, "--default-top-p", type=float, default=defaults.DEFAULT_TOP_P, help="")
    add_env_argument(
        p, "--shutdown-grace-seconds", type=float, default=30.0, help="SIGTERM drain time"
    )
    add_env_argument(
        p, "--allow-download", type=parse_bool, default=True, help="fetch hf:// models"
    )
    add_env_argument(
        p, "--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="largest request body"
    )
    add_env_argument(
        p,
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT_S,
        help="seconds a request's line and headers may take to arrive (then 408)",
    )
    add_env_argument(
        p,
        "--body-timeout",
        type=float,
        default=BODY_TIMEOUT_S,
        help="seconds a request body may take to arrive after its headers (then 408)",
    )
    add_env_argument(
        p,
        "--keepalive-timeout",
        type=float,
        default=KEEPALIVE_TIMEOUT_S,
        help="seconds an idle keep-alive HTTP connection stays open",
    )
    add_env_argument(p, "--log-level", default="info", help="debug | info | warning")
    add_env_argument(
        p,
        "--exit-on-load-failure",
        type=parse_bool,
        default=False,
        help="exit (status 1) when the model cannot be loaded, instead of answering 503 "
        "(in pods: the kubelet restarts it and the operator shows why)",
    )


def _check_limits(args: argparse.Namespace) -> str | None:
    positive = ("max_batch_size", "max_new_tokens_limit", "default_max_new_tokens",
                "prefill_chunk_tokens", "max_body_bytes")  # fmt: skip
    for name in positive:
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})"
    for name in ("max_waiting", "max_context_tokens", "threads"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must not be negative (got {getattr(args, name)})"
    for name in ("header_timeout", "body_timeout", "keepalive_timeout"):
        if not getattr(args, name) > 0:
            return f"--{name.replace('_', '-')} must be positive (got {getattr(args, name)})"
    if not 0 < args.default_top_p <= 1:
        return f"--default-top-p must be in (0, 1] (got {args.default_top_p})"
    if args.default_temperature < 0:
        return f"--default-temperature must not be negative (got {args.default_temperature})"
    if args.default_max_new_tokens > args.max_new_tokens_limit:
        return "--default-max-new-tokens must not exceed --max-new-tokens-limit"
    return None


PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _quiet_probes(record: Any) -> bool:
    """Drop access-log lines of successful probes and scrapes (they arrive every second)."""
    args = record.args if isinstance(record.args, tuple) else ()
    return not (len(args) >= 5 and args[2] in PROBE_PATHS and args[4] == 200)


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from llmstream import termination
    from llmstream.modelsource import ModelSourceError, parse_source, served_name

    from .engine import EngineConfig
    from .models.default import NAME as DEFAULT_NAME
    from .models.default import pull_default
    from .models.sources import resolve_source
    from .runner import RunnerConfig
    from .sampling import Defaults
    from .server import ServerConfig, create_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("uvicorn.access").addFilter(_quiet_probes)
    problem = _check_limits(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        source = parse_source(args.model)
        if source.scheme == "builtin" and source.name == DEFAULT_NAME:
            folder = pull_default()  # instant when provisioned (or baked into the image)
        else:
            folder = resolve_source(source, allow_download=args.allow_download)
    except (ModelSourceError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        termination.report(termination.MODEL_LOAD_FAILED, str(exc))
        return 2
    name = args.model_name or served_name(source)
    config = ServerConfig(
        model_path=folder,
        model_name=name,
        model_aliases=args.model_aliases,
        runner=RunnerConfig(device=args.device, dtype=args.dtype, threads=args.threads),
        engine=EngineConfig(
            max_batch_size=args.max_batch_size,
            max_waiting=args.max_waiting,
            max_context_tokens=args.max_context_tokens or None,
            prefill_chunk_tokens=args.prefill_chunk_tokens,
        ),
        max_body_bytes=args.max_body_bytes,
        body_timeout_s=args.body_timeout,
        exit_on_load_failure=args.exit_on_load_failure,
        defaults=Defaults(
            max_new_tokens=args.default_max_new_tokens,
            temperature=args.default_temperature,
            top_p=args.default_top_p,
            max_new_tokens_limit=args.max_new_tokens_limit,
        ),
    )
    from .shutdown import GracefulServer
    from .slowpeers import head_deadline_protocol

    app = create_app(config)
    grace = int(args.shutdown_grace_seconds)
    server = GracefulServer(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=grace,
            timeout_keep_alive=max(1, round(args.keepalive_timeout)),
            http=head_deadline_protocol(args.header_timeout),
        ),
        engine=lambda: app.state.llm.engine,
        grace_s=grace,
    )
    server.run()
    return 0


def _pull_default(args: argparse.Namespace) -> int:
    from .models.default import folder_size, pull_default

    try:
        folder = pull_default()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"default model: {folder} ({folder_size(folder) / 1e6:.0f} MB)", file=sys.stderr)
    print(folder)
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from .models.tiny import make_tiny

    print(make_tiny(args.path, seed=args.seed))
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from llmstream.modelsource import ModelSourceError

    from .models.sources import resolve_source

    try:
        print(resolve_source(args.source))
    except ModelSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
