"""The CUDA paths on the default model: bfloat16 load, greedy parity, streaming, split load.

A missing GPU is not a missing test tool: where CUDA is absent these skip, under CI=true too
(they do not go through testsupport.skip_or_fail). `make gpu-check` runs them on a GPU machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from llmstream_inference.engine import Engine, EngineConfig, Finished, TokenDelta
from llmstream_inference.runner import ModelRunner, RunnerConfig
from llmstream_inference.sampling import Defaults, resolve

from benchmarks.inference import PROMPTS as BENCH_PROMPTS
from llmstream.wire import SamplingParams

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

PROMPTS = BENCH_PROMPTS[:8]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def runner(default_model_dir: Path) -> ModelRunner:
    """The default model pinned to the first GPU, in bfloat16."""
    return ModelRunner(default_model_dir, RunnerConfig(device="cuda:0", dtype="bfloat16"))


@pytest.fixture(scope="module")
def engine(runner: ModelRunner) -> Iterator[Engine]:
    running = Engine(runner, EngineConfig(max_batch_size=len(PROMPTS)))
    running.start()
    yield running
    running.stop()


def chat_ids(runner: ModelRunner, text: str) -> list[int]:
    rendered = runner.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True,
        return_dict=True,
    )  # fmt: skip
    return list(rendered["input_ids"])


def up_to_eos(tokens: list[int], eos: frozenset[int]) -> list[int]:
    end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
    return tokens[:end]


@torch.inference_mode()
def runner_greedy(runner: ModelRunner, ids: list[int], n: int) -> list[int]:
    """Greedy tokens through the engine's own path: prefill, batch KV cache, decode steps."""
    batch = runner.new_batch(1)
    cache, logits = runner.prefill(ids, None, 0)
    batch.add_row(runner.cache_rows(cache))
    tokens = [int(logits.argmax())]
    while len(tokens) < n and tokens[-1] not in runner.eos_ids:
        tokens.append(int(runner.decode(batch, [tokens[-1]])[0].argmax()))
    return tokens


@torch.inference_mode()
def generate_greedy(runner: ModelRunner, ids: list[int], n: int) -> list[int]:
    prompt = torch.tensor([ids], device=runner.device)
    out = runner.model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False
    )
    return up_to_eos([int(t) for t in out[0, len(ids) :]], runner.eos_ids)


def test_the_model_loads_on_the_gpu_in_bfloat16(runner: ModelRunner) -> None:
    assert runner.device.type == "cuda"
    assert runner.dtype == torch.bfloat16
    assert runner.device_map is None  # cuda:0 pins one GPU
    assert {(p.device.type, p.dtype) for p in runner.model.parameters()} == {
        ("cuda", torch.bfloat16)
    }


def test_greedy_tokens_equal_generate_on_the_same_gpu(runner: ModelRunner) -> None:
    ids = chat_ids(runner, PROMPTS[0])
    ours = runner_greedy(runner, ids, NEW_TOKENS)
    theirs = generate_greedy(runner, ids, NEW_TOKENS)
    assert ours == theirs, (runner.tokenizer.decode(ours), runner.tokenizer.decode(theirs))


def test_the_engine_streams_concurrent_requests_on_the_gpu(engine: Engine) -> None:
    sampling = resolve(SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0), Defaults())

    async def one(text: str) -> tuple[list[float], str, Finished]:
        times: list[float] = []
        pieces: list[str] = []
        done: Finished | None = None
        async for event in engine.open(chat_ids(engine.runner, text), sampling):
            if isinstance(event, TokenDelta):
                times.append(time.monotonic())
                pieces.append(event.text)
            elif isinstance(event, Finished):
                done = event
        assert done is not None, f"{text!r} ended without Finished"
        return times, "".join(pieces), done

    async def run() -> list[tuple[list[float], str, Finished]]:
        return list(await asyncio.gather(*(one(text) for text in PROMPTS)))

    results = asyncio.run(run())
    for times, text, done in results:
        assert done.reason in ("length", "stop")
        assert done.completion_tokens >= 1
        assert text.strip()
        assert len(times) > 1
    # They ran together: every stream had its first token before any stream ended.
    assert max(times[0] for times, _, _ in results) < min(times[-1] for times, _, _ in results)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs at least 2 CUDA devices")
def test_a_model_split_across_gpus_gives_the_same_greedy_text(
    default_model_dir: Path, runner: ModelRunner
) -> None:
    split = ModelRunner(default_model_dir, RunnerConfig(device="cuda", dtype="bfloat16"))
    assert split.device_map is not None
    assert len({p.device for p in split.model.parameters()}) >= 2
    for text in PROMPTS[:3]:
        ids = chat_ids(runner, text)
        alone = runner.tokenizer.decode(runner_greedy(runner, ids, NEW_TOKENS))
        assert split.tokenizer.decode(runner_greedy(split, ids, NEW_TOKENS)) == alone
