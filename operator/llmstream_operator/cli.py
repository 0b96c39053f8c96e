"""`llmstream operator run`: the kopf operator with liveness and metrics endpoints."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from llmstream.addressmap import AddressMapping, parse_all
from llmstream.envargs import add_env_argument

from . import names
from .names import DEFAULT_INTERVAL_SECONDS, DEFAULT_LIVENESS_PORT, DEFAULT_METRICS_PORT

ENV_PREFIX = "LLMSTREAM_OPERATOR"
# `llmstream doctor`: how long the test prompt may take (a wake from zero included), and its text.
DOCTOR_TIMEOUT_S = 300.0
DOCTOR_PROMPT = "Once upon a time"


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def _address_map(text: str) -> tuple[AddressMapping, ...]:
    try:
        return parse_all([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(commands: Any) -> None:
    """Add the `operator` command group to the umbrella parser."""
    operator = commands.add_parser("operator", help="run the LLMEndpoint operator")
    actions = operator.add_subparsers(dest="operator_command", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="reconcile LLMEndpoints and autoscale them (kopf, standalone)",
        description="Flags can also be set as LLMSTREAM_OPERATOR_<FLAG> variables.",
    )
    scope = run.add_mutually_exclusive_group()
    add_env_argument(
        scope,
        "--namespace",
        prefix=ENV_PREFIX,
        help="watch only these namespaces (comma-separated)",
    )
    scope.add_argument(
        "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )

    def env(flag: str, **kwargs: Any) -> None:
        add_env_argument(run, flag, prefix=ENV_PREFIX, **kwargs)

    env("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    env("--context", help="kubeconfig context")
    env(
        "--interval",
        type=_positive,
        default=DEFAULT_INTERVAL_SECONDS,
        help="seconds between autoscaler ticks",
    )
    env(
        "--inference-image",
        default=names.DEFAULT_INFERENCE_IMAGE,
        help="inference image (spec.image overrides it)",
    )
    env("--gateway-image", default=names.DEFAULT_GATEWAY_IMAGE, help="gateway image")
    env(
        "--image-pull-policy",
        default="IfNotPresent",
        choices=["Always", "IfNotPresent", "Never"],
        help="pull policy of both images",
    )
    env(
        "--shutdown-grace-seconds",
        type=int,
        default=30,
        help="time running streams get to finish when an inference pod stops",
    )
    env("--metrics-host", default="0.0.0.0", help="address of the /metrics server")
    env(
        "--metrics-port",
        type=_port,
        default=DEFAULT_METRICS_PORT,
        help="port of the /metrics server (0: off)",
    )
    env(
        "--liveness-port",
        type=_port,
        default=DEFAULT_LIVENESS_PORT,
        help="port of kopf's /healthz liveness endpoint (0: off)",
    )
    env(
        "--load-timeout",
        type=_positive,
        default=1.0,
        help="seconds to wait for a gateway's /v1/load",
    )
    env(
        "--pod-address-map",
        type=_address_map,
        default=(),
        metavar="NETWORK=HOST:PORT[,...]",
        help="read the /v1/load of gateway pods in NETWORK at HOST:PORT instead of at the pod "
        "address (an operator run outside the cluster: tests, debugging)",
    )
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.set_defaults(handler=_run)
    _register_doctor(commands)


def _register_doctor(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check an LLMEndpoint link by link, from the resource to its first token",
        description="Check an LLMEndpoint link by link, from the resource to its first token, "
        "and stop at the first broken link with its fix. Exit status: 0 every link holds, "
        "1 a link is broken, 2 nothing could be checked (kubeconfig, namespace).",
    )
    doctor.add_argument("endpoint", metavar="ENDPOINT", help="the LLMEndpoint's name")
    doctor.add_argument(
        "-n", "--namespace", help="its namespace (default: the kubeconfig context's, else default)"
    )
    doctor.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG)")
    doctor.add_argument("--context", help="kubeconfig context")
    doctor.add_argument(
        "--timeout",
        type=_positive,
        default=DOCTOR_TIMEOUT_S,
        help="seconds the test prompt may take, a wake from zero included",
    )
    doctor.add_argument("--prompt", default=DOCTOR_PROMPT, help="the test prompt's text")
    doctor.add_argument(
        "--no-prompt",
        dest="prompt",
        action="store_const",
        const=None,
        help="do not send the test prompt (it wakes an endpoint at zero replicas)",
    )
    doctor.add_argument(
        "--api-key", help="the gateway's API key, when it needs one (default: $LLMSTREAM_API_KEY)"
    )
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor_io import Options, main

    return main(
        Options(
            endpoint=args.endpoint,
            namespace=args.namespace,
            kubeconfig=args.kubeconfig,
            context=args.context,
            timeout=args.timeout,
            prompt=args.prompt,
            api_key=args.api_key,
        )
    )


def _run(args: argparse.Namespace) -> int:
    import kopf

    from .app import create_runtime, run_operator
    from .builders import BuildSettings
    from .kube import KubeConfigError, discover_access
    from .runtime import OperatorSettings

    namespaces = tuple(
        n.strip()
        for n in (args.namespace or "").split(",")
        if n.strip() and not args.all_namespaces
    )
    settings = OperatorSettings(
        namespaces=namespaces,
        interval=args.interval,
        build=BuildSettings(
            inference_image=args.inference_image,
            gateway_image=args.gateway_image,
            image_pull_policy=args.image_pull_policy,
            shutdown_grace_seconds=args.shutdown_grace_seconds,
        ),
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port or None,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz"
        if args.liveness_port
        else None,
        load_timeout=args.load_timeout,
        pod_address_map=args.pod_address_map,
    )
    try:
        access = discover_access(args.kubeconfig, args.context)
    except KubeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kopf.configure(verbose=args.verbose)
    scope = ", ".join(namespaces) if namespaces else "all namespaces"
    print(f"llmstream operator: {access.server}, watching {scope}", file=sys.stderr)
    asyncio.run(run_operator(create_runtime(settings, access)))
    return 0
