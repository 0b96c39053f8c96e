"""Start-up, readiness and graceful shutdown of the inference server process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from servers import free_port, inference_server


def test_sigterm_lets_a_running_stream_finish_and_admits_no_more(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with inference_server(
        tiny_model_dir, "--shutdown-grace-seconds", "20", log_dir=tmp_path
    ) as srv:
        events: list[dict[str, object]] = []
        first_token = threading.Event()

        def consume() -> None:
            body = {"prompt": "Count slowly", "params": {"max_new_tokens": 300, "temperature": 0},
                    "stream": True}  # fmt: skip
            with httpx.stream("POST", f"{srv.url}/v1/generate", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        first_token.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert first_token.wait(30)
        srv.process.send_signal(signal.SIGTERM)
        reader.join(60)
        assert events[-1]["type"] == "done"
        assert events[-1]["finish_reason"] == "length"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{srv.url}/readyz", timeout=2)
        # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit.
        assert srv.process.wait(30) in (0, -signal.SIGTERM)
        assert "Finished server process" in srv.output()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "s3://bucket/m"], "unknown model source scheme 's3'"),
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--max-batch-size", "0"], "--max-batch-size must be at least 1"),
        (["--default-top-p", "1.5"], "--default-top-p must be in (0, 1]"),
    ],
)
def test_bad_start_up_settings_exit_with_a_clear_message(args: list[str], message: str) -> None:
    command = [sys.executable, "-m", "llmstream", "inference", "serve", "--port", str(free_port())]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_malformed_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSTREAM_MAX_WAITING", "lots")
    command = [sys.executable, "-m", "llmstream", "inference", "serve", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "LLMSTREAM_MAX_WAITING='lots'" in result.stderr


@pytest.mark.parametrize(
    ("path", "status", "kept"),
    [
        ("/readyz", 200, False),
        ("/metrics", 200, False),
        ("/readyz", 503, True),
        ("/v1/generate", 200, True),
    ],
)
def test_access_log_drops_only_successful_probes(path: str, status: int, kept: bool) -> None:
    import logging

    from llmstream_inference.cli import _quiet_probes

    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, "%s %s %s %s %d",
                               ("127.0.0.1:1", "GET", path, "1.1", status), None)  # fmt: skip
    assert _quiet_probes(record) is kept


@pytest.mark.slow
def test_a_stream_longer_than_the_shutdown_grace_ends_with_an_error_event_not_a_cut(
    default_model_dir: Path, tmp_path: Path
) -> None:
    """SmolLM2 at about 20 tokens/s cannot finish 300 tokens in a 2 s grace period: each
    client reads an `error` event saying why, before the server exits."""
    with inference_server(
        default_model_dir, "--shutdown-grace-seconds", "2", log_dir=tmp_path
    ) as srv:
        results: list[list[dict[str, object]]] = [[], []]
        started = [threading.Event(), threading.Event()]

        def consume(i: int) -> None:
            body = {"prompt": "Count from one to a thousand", "stream": True,
                    "params": {"max_new_tokens": 300, "temperature": 0}}  # fmt: skip
            with httpx.stream("POST", f"{srv.url}/v1/generate", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        results[i].append(json.loads(line[6:]))
                        started[i].set()

        readers = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
        for reader in readers:
            reader.start()
        assert all(event.wait(60) for event in started)
        srv.process.send_signal(signal.SIGTERM)
        for reader in readers:
            reader.join(60)
        for events in results:
            last = events[-1]
            assert last["type"] == "error", last
            assert "shutdown grace period" in str(last["message"])
        assert srv.process.wait(30) in (0, -signal.SIGTERM)
