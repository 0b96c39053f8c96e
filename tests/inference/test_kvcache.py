"""The shared right-aligned KV cache gives the same tokens as running each sequence alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from llmstream_inference.runner import ModelRunner

PROMPTS = [
    "Kubernetes runs containers on",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen",
    "A",
    "What is a pod? A pod is the smallest unit that Kubernetes schedules",
]


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path) -> ModelRunner:
    return ModelRunner(tiny_model_dir)


def solo_greedy(runner: ModelRunner, prompt: str, n: int) -> list[int]:
    ids = runner.tokenizer(prompt)["input_ids"]
    out = runner.model.generate(
        torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False
    )
    return [int(t) for t in out[0, len(ids) :]]


@torch.inference_mode()
def batched_greedy(runner: ModelRunner, joins: dict[int, int], n: int) -> dict[int, list[int]]:
    """Run PROMPTS through one batch cache; prompt i joins at step joins[i]."""
    batch = runner.new_batch(len(PROMPTS), capacity=8)  # tiny: forces shifts and growth
    rows: list[tuple[int, list[int]]] = []
    done: dict[int, list[int]] = {}
    step = 0
    while len(done) < len(joins):
        for i, at in joins.items():
            if at == step:
                cache, logits = runner.prefill(runner.tokenizer(PROMPTS[i])["input_ids"], None, 0)
                batch.add_row(runner.cache_rows(cache))
                rows.append((i, [int(logits.argmax())]))
        if rows:
            logits = runner.decode(batch, [tokens[-1] for _, tokens in rows])
            for k, (_, tokens) in enumerate(rows):
                tokens.append(int(logits[k].argmax()))
            for k in reversed(range(len(rows))):
                if len(rows[k][1]) >= n:
                    done[rows[k][0]] = rows[k][1][:n]
                    batch.remove_row(k)
                    rows[k] = rows[-1]
                    rows.pop()
        step += 1
    return done


def test_staggered_joins_and_leaves_match_solo_generation(runner: ModelRunner) -> None:
    n = 16
    done = batched_greedy(runner, {0: 0, 1: 3, 2: 5, 3: 9}, n)
    for i, prompt in enumerate(PROMPTS):
        assert done[i] == solo_greedy(runner, prompt, n), prompt


def test_a_longer_prompt_joining_a_short_window_shifts_it(runner: ModelRunner) -> None:
    n = 6
    done = batched_greedy(runner, {2: 0, 1: 1}, n)  # "A" first, then a long prompt
    assert done[2] == solo_greedy(runner, PROMPTS[2], n)
    assert done[1] == solo_greedy(runner, PROMPTS[1], n)


@torch.inference_mode()
def test_prompts_prefilled_together_continue_like_solo_prompts(runner: ModelRunner) -> None:
    n = 8
    prompts = [runner.tokenizer(p)["input_ids"] for p in PROMPTS]
    batch = runner.new_batch(len(PROMPTS))
    rows = []
    for kv, logits in runner.prefill_batch(prompts):
        batch.add_row(kv)
        rows.append([int(logits.argmax())])
    while len(rows[0]) < n:
        logits = runner.decode(batch, [tokens[-1] for tokens in rows])
        for k, tokens in enumerate(rows):
            tokens.append(int(logits[k].argmax()))
    for prompt, tokens in zip(PROMPTS, rows, strict=True):
        assert tokens == solo_greedy(runner, prompt, n), prompt
