"""The tiny test model and the embedded default model."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from llmstream_inference.models import default
from llmstream_inference.models.tiny import make_tiny
from transformers import AutoModelForCausalLM, AutoTokenizer


def _greedy(folder: Path, prompt: str, n: int = 12) -> str:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return str(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :]))


def test_tiny_model_builds_reloads_and_generates(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < params < 10_000_000
    text = _greedy(tiny_model_dir, "Kubernetes runs containers")
    assert len(text) > 0


def test_tiny_model_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = make_tiny(tmp_path / "again")
    assert _greedy(again, "The quick brown fox") == _greedy(tiny_model_dir, "The quick brown fox")
    a = (tiny_model_dir / "model.safetensors").read_bytes()
    b = (again / "model.safetensors").read_bytes()
    assert a == b


def test_tiny_tokenizer_round_trips_multibyte_text(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "café 東京 🚀 naïve"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_tiny_tokenizer_has_a_chat_template(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>assistant\n")


def test_make_tiny_cli_writes_a_loadable_model(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "llmstream", "model", "make-tiny", str(tmp_path / "t")], check=True
    )
    assert (tmp_path / "t" / "config.json").is_file()
    assert (tmp_path / "t" / "tokenizer.json").is_file()


def test_interrupted_pull_leaves_nothing_that_looks_valid(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_gguf = tmp_path / default.GGUF_NAME
    fake_gguf.write_bytes(b"GGUF")

    def explode(gguf: Path, out: Path, say: object) -> None:
        (out / "config.json").write_text("{}")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(default, "locate_gguf", lambda: fake_gguf)
    monkeypatch.setattr(default, "convert_gguf", explode)
    with pytest.raises(KeyboardInterrupt):
        default.pull_default()
    models = isolated_home / "models"
    assert list(models.iterdir()) == []


@pytest.mark.slow
def test_pull_default_is_idempotent_and_instant_when_present(default_model_dir: Path) -> None:
    started = time.monotonic()
    again = default.pull_default()
    assert again == default_model_dir
    assert time.monotonic() - started < 1.0
    assert default.is_complete(again)
    leftovers = [p for p in again.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.slow
def test_pull_default_cli_prints_the_folder(default_model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmstream", "model", "pull-default"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == str(default_model_dir)


@pytest.mark.slow
def test_default_model_loads_plainly_and_answers(default_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is Kubernetes?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(answer.strip()) > 0
    assert any(word in answer.lower() for word in ("container", "kubernetes", "platform", "open"))
