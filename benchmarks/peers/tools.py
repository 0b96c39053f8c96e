"""How each tool of the field is invoked, and how its own report is read.

Each tool runs unmodified: only CLI flags name the URL, the model, the local tokenizer folder
and a small bounded workload. `command` builds the argv; `read_report` turns the files the
tool wrote into one `RunResult` (requests, errors with the tool's messages, TTFT p50, ITL p50,
output tokens/s), leaving a field None where the tool reported nothing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Endpoint = Literal["chat", "completions"]
# Distinct error messages kept per run (the tools repeat one message per failed request).
MAX_MESSAGES = 10


@dataclass(frozen=True)
class Workload:
    """A short, bounded load: `requests` in all, `concurrency` at a time, `max_seconds` at most."""

    requests: int = 24
    concurrency: int = 4
    prompt_tokens: int = 64
    output_tokens: int = 32
    max_seconds: int = 90


@dataclass(frozen=True)
class Target:
    """Where a tool sends its load: a base URL (no /v1), the served model, its tokenizer."""

    name: str
    url: str
    model: str
    tokenizer: Path


@dataclass
class RunResult:
    """One tool's run against one target, as the tool itself reported it."""

    tool: str
    target: str
    endpoint: str
    exit_code: int | None = None
    seconds: float | None = None
    requests: int | None = None
    successful: int | None = None
    errors: int | None = None
    incomplete: int | None = None
    ttft_p50_ms: float | None = None
    itl_p50_ms: float | None = None
    output_tokens_per_s: float | None = None
    error_messages: list[str] = field(default_factory=list)
    report: str | None = None
    log_tail: str | None = None

    @property
    def failed(self) -> bool:
        """Errors reported, no request completed, no report at all, or a non-zero exit."""
        return (
            bool(self.errors) or not self.successful or self.report is None or self.exit_code != 0
        )


def _distinct(messages: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for message in messages:
        counts[message] = counts.get(message, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    return [f"{text} (x{n})" if n > 1 else text for text, n in ranked[:MAX_MESSAGES]]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


# --- guidellm -------------------------------------------------------------------------------


def guidellm_command(
    exe: Path, target: Target, load: Workload, out: Path, endpoint: Endpoint
) -> list[str]:
    backend = f"kind=openai_http,target={target.url},model={target.model}"
    if endpoint == "completions":
        backend += ",request_format=/v1/completions"
    return [
        str(exe), "run",
        "--backend", backend,
        "--profile", f"kind=concurrent,streams={load.concurrency}",
        "--constraint", f"kind=max_requests,count={load.requests}",
        "--constraint", f"kind=max_duration,seconds={load.max_seconds}",
        "--data", f"kind=synthetic_text,prompt_tokens={load.prompt_tokens},"
                  f"output_tokens={load.output_tokens}",
        "--tokenizer", f"kind=huggingface_auto,model={target.tokenizer}",
        "--output", f"kind=json,path={out / 'guidellm.json'}",
        "--disable-console-interactive",
    ]  # fmt: skip


def guidellm_report(out: Path, result: RunResult) -> None:
    path = out / "guidellm.json"
    if not path.exists():
        return
    result.report = str(path)
    benchmark = json.loads(path.read_text())["benchmarks"][0]
    metrics = benchmark["metrics"]
    totals = metrics["request_totals"]
    result.successful, result.errors = totals["successful"], totals["errored"]
    result.incomplete = totals["incomplete"]
    result.requests = totals["total"]

    def median(name: str) -> float | None:
        stats = metrics.get(name, {}).get("successful") or {}
        return _number(stats.get("median")) if stats.get("count") else None

    result.ttft_p50_ms = median("time_to_first_token_ms")
    result.itl_p50_ms = median("inter_token_latency_ms")
    throughput = metrics.get("output_tokens_per_second", {}).get("successful") or {}
    if throughput.get("count"):
        result.output_tokens_per_s = _number(throughput.get("mean"))
    errored = benchmark.get("requests", {}).get("errored") or []
    result.error_messages = _distinct([str((r.get("info") or {}).get("error")) for r in errored])


# --- inference-perf -------------------------------------------------------------------------


def inference_perf_command(
    exe: Path, target: Target, load: Workload, out: Path, endpoint: Endpoint
) -> list[str]:
    if endpoint == "completions":
        # Its `random` generator makes exact-length prompts; it serves completions only.
        data = [
            "--data.type", "random",
            "--data.input_distribution.mean", str(load.prompt_tokens),
            "--data.input_distribution.min", str(load.prompt_tokens),
            "--data.input_distribution.max", str(load.prompt_tokens),
            "--data.output_distribution.mean", str(load.output_tokens),
            "--data.output_distribution.min", str(load.output_tokens),
            "--data.output_distribution.max", str(load.output_tokens),
        ]  # fmt: skip
    else:
        # Of its synthetic generators only `mock` makes chat requests (its own short prompts,
        # no length settings); `random` and `shared_prefix` send text completions.
        data = ["--data.type", "mock"]
    stage = [{"num_requests": load.requests, "concurrency_level": load.concurrency}]
    return [
        str(exe),
        "--server.type", "vllm",
        "--server.base_url", target.url,
        "--server.model_name", target.model,
        "--tokenizer.pretrained_model_name_or_path", str(target.tokenizer),
        "--api.type", "completion" if endpoint == "completions" else "chat",
        "--api.streaming", "true",
        *data,
        "--load.type", "concurrent",
        "--load.stages", json.dumps(stage),
        "--load.num_workers", "1",
        "--load.request_timeout", str(load.max_seconds),
        "--storage.local_storage.path", str(out),
    ]  # fmt: skip


def inference_perf_report(out: Path, result: RunResult) -> None:
    path = out / "summary_lifecycle_metrics.json"
    if not path.exists():
        return
    result.report = str(path)
    summary = json.loads(path.read_text())
    successes, failures = summary.get("successes") or {}, summary.get("failures") or {}
    result.successful, result.errors = successes.get("count", 0), failures.get("count", 0)
    result.requests = (result.successful or 0) + (result.errors or 0)
    latency = successes.get("latency") or {}

    def median_ms(name: str) -> float | None:
        value = _number((latency.get(name) or {}).get("median"))
        return None if value is None or not result.successful else 1000 * value

    result.ttft_p50_ms = median_ms("time_to_first_token")
    result.itl_p50_ms = median_ms("inter_token_latency")
    if result.successful:
        throughput = successes.get("throughput") or {}
        result.output_tokens_per_s = _number(throughput.get("output_tokens_per_sec"))
    messages: list[str] = []
    for label, entry in (failures.get("by_label") or {}).items():
        examples = [m.get("message", "") for m in entry.get("messages") or []] or [""]
        messages.extend(f"{label}: {example}".rstrip(": ") for example in examples)
        messages.extend([messages[-1]] * max(0, int(entry.get("count", 1)) - len(examples)))
    result.error_messages = _distinct(messages)


# --- aiperf ---------------------------------------------------------------------------------


def aiperf_command(
    exe: Path, target: Target, load: Workload, out: Path, endpoint: Endpoint
) -> list[str]:
    return [
        str(exe), "profile",
        "--model", target.model,
        "--url", target.url,
        "--endpoint-type", endpoint,
        "--streaming",
        "--tokenizer", str(target.tokenizer),
        "--prompt-input-tokens-mean", str(load.prompt_tokens),
        "--prompt-input-tokens-stddev", "0",
        "--prompt-output-tokens-mean", str(load.output_tokens),
        "--prompt-output-tokens-stddev", "0",
        "--concurrency", str(load.concurrency),
        "--request-count", str(load.requests),
        "--benchmark-duration", str(load.max_seconds),
        "--random-seed", "42",
        "--workers-max", "1",
        "--output-artifact-dir", str(out),
    ]  # fmt: skip


def aiperf_report(out: Path, result: RunResult) -> None:
    """The summary export for the metrics; the per-request records for the errors (when
    every request failed, aiperf 0.13.0 writes only the records)."""
    summary_path, records_path = out / "profile_export_aiperf.json", out / "profile_export.jsonl"
    records = []
    if records_path.exists():
        lines = records_path.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    failed = [r["error"] for r in records if r.get("error")]
    messages = [f"{e.get('code')} {e.get('type')}: {e.get('message')}" for e in failed]
    result.error_messages = _distinct(messages)
    result.errors = len(failed)
    result.successful = len(records) - len(failed)
    result.requests = len(records)
    if records:
        result.report = str(records_path)
    if not summary_path.exists():
        return
    result.report = str(summary_path)
    export = json.loads(summary_path.read_text())

    def stat(name: str, key: str) -> float | None:
        return _number((export.get(name) or {}).get(key))

    if not records:
        result.successful = int(stat("request_count", "avg") or 0)
        result.errors = int(stat("error_request_count", "avg") or 0)
        result.requests = result.successful + result.errors
    if result.successful:
        result.ttft_p50_ms = stat("time_to_first_token", "p50")
        result.itl_p50_ms = stat("inter_token_latency", "p50")
        result.output_tokens_per_s = stat("output_token_throughput", "avg")


# --- the table of tools ---------------------------------------------------------------------

Command = Callable[[Path, Target, Workload, Path, Endpoint], list[str]]
Reader = Callable[[Path, RunResult], None]


@dataclass(frozen=True)
class ToolSpec:
    """How to run one tool: its argv builder, report reader, default endpoint, extra env."""

    name: str
    command: Command
    read_report: Reader
    endpoint: Endpoint
    offline_hub: bool = True

    def env(self) -> dict[str, str]:
        """The tool's environment: never the model hub, no telemetry, no pager or colours.

        aiperf 0.13.0 is the exception to HF_HUB_OFFLINE: in offline mode it resolves the
        tokenizer name in the hub cache only, so a local folder fails ("Repo id must be in
        the form ..."); online, a local path is loaded from disk with no hub request.
        """
        env = dict(os.environ)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            env.pop(name, None)
            if self.offline_hub:
                env[name] = "1"
        env.update(
            HF_HUB_DISABLE_TELEMETRY="1",
            DO_NOT_TRACK="1",
            NO_COLOR="1",
            TERM="dumb",
            COLUMNS="160",
            NO_PROXY="127.0.0.1,localhost",
            PYTHONUNBUFFERED="1",
        )
        return env


TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec("guidellm", guidellm_command, guidellm_report, "chat"),
        ToolSpec("inference-perf", inference_perf_command, inference_perf_report, "completions"),
        ToolSpec("aiperf", aiperf_command, aiperf_report, "chat", offline_hub=False),
    )
}

_ERROR_LINE = re.compile(r"(Error|Exception|error|failed|Failed)\b")


def last_error_lines(log: str, keep: int = 3) -> list[str]:
    """The last few lines of a tool's output that look like an error (for a run that wrote no
    report, e.g. guidellm refusing to start when `GET /health` fails)."""
    lines = [line.strip() for line in log.splitlines() if _ERROR_LINE.search(line)]
    return lines[-keep:]
