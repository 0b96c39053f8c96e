"""The embedded default model (SmolLM2-135M-Instruct) served for real."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from servers import inference_server

ENGLISH = {"the", "a", "is", "of", "and", "to", "in", "it", "that", "for", "are", "with", "as"}


@pytest.mark.slow
def test_the_chat_endpoint_answers_in_english_words(
    default_model_dir: Path, tmp_path: Path
) -> None:
    with inference_server(default_model_dir, "--threads", "2", log_dir=tmp_path) as srv:
        body = {"messages": [{"role": "user", "content": "What is Kubernetes?"}],
                "max_tokens": 40, "temperature": 0}  # fmt: skip
        reply = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=120).json()
    text = reply["choices"][0]["message"]["content"]
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) >= 10
    assert len(ENGLISH.intersection(words)) >= 3, text
