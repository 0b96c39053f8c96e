"""Inference benchmark: our continuous-batching engine against the usual alternatives.

All designs run in one process on the same loaded SmolLM2-135M-Instruct (float32 on the CPU
by default; `--device cuda --dtype bfloat16` on a GPU), the same torch thread count, the same
prompts and 64 new greedy tokens per request:

- engine:   llmstream's engine; N requests arrive open-loop (spread over `--spread` seconds,
            independent of completions) and stream concurrently;
- threads:  the tutorial design: one thread per request running `model.generate` with a
            TextIteratorStreamer (the requests arrive the same way);
- static:   one batched `model.generate` over all N prompts (left-padded), the upper bound
            for throughput (no streaming, no late joiners);
- hf-cb:    transformers' own continuous batching (`init_continuous_batching`), at the
            levels named by `--hf-cb-levels`.

Per level: aggregate tokens/s (generated tokens / wall time from first arrival to last
token), TTFT p50/p95 (from each request's arrival), inter-token latency p50/p95. Results go
to `<out>/inference.json` and `<out>/inference.png`; ratios are computed within the run.

Run: `python -m benchmarks.inference --out bench-results` (or `make bench-inference`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

PROMPTS = [
    "Write a detailed essay about the history of computers.",
    "Explain in depth how a car engine works.",
    "Describe the water cycle in detail for a student.",
    "Tell me a long story about a dragon and a knight.",
    "Explain how the internet works, step by step.",
    "Describe the solar system and each of its planets.",
    "Write a long letter to a friend about your summer holiday.",
    "Explain photosynthesis in detail.",
    "Describe how to bake bread, step by step.",
    "Write a detailed guide to learning a new language.",
    "Explain the causes of the seasons on Earth.",
    "Describe the life cycle of a butterfly in detail.",
    "Write an essay about the importance of sleep.",
    "Explain how vaccines train the immune system.",
    "Describe the history of the Roman Empire.",
    "Explain how airplanes fly, in detail.",
]
NEW_TOKENS = 64


@dataclass
class Trace:
    """Timestamps of one request: arrival and each generated token."""

    arrival: float
    tokens: list[float] = field(default_factory=list)
    count: int | None = None  # generated tokens when an increment can carry several

    @property
    def generated(self) -> int:
        return self.count if self.count is not None else len(self.tokens)


@dataclass
class Result:
    design: str
    streams: int
    tokens: int
    seconds: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    itl_p50_s: float
    itl_p95_s: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summarise(design: str, traces: list[Trace]) -> Result:
    start = min(t.arrival for t in traces)
    end = max(t.tokens[-1] for t in traces if t.tokens)
    tokens = sum(t.generated for t in traces)
    ttft = [t.tokens[0] - t.arrival for t in traces if t.tokens]
    itl = [b - a for t in traces for a, b in zip(t.tokens, t.tokens[1:], strict=False)]
    return Result(
        design=design,
        streams=len(traces),
        tokens=tokens,
        seconds=end - start,
        tokens_per_s=tokens / (end - start),
        ttft_p50_s=percentile(ttft, 50),
        ttft_p95_s=percentile(ttft, 95),
        itl_p50_s=percentile(itl, 50),
        itl_p95_s=percentile(itl, 95),
    )


def arrival_offsets(n: int, spread: float) -> list[float]:
    """Evenly spread open-loop arrival times (the same schedule for every design)."""
    return [spread * i / max(1, n - 1) if n > 1 else 0.0 for i in range(n)]


class Bench:
    def __init__(
        self,
        model_dir: Path,
        threads: int,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
    ) -> None:
        from llmstream_inference.runner import ModelRunner, RunnerConfig

        torch.set_num_threads(threads)
        self.runner = ModelRunner(
            model_dir, RunnerConfig(device=device, dtype=dtype, threads=threads)
        )
        self.max_batch_size = max_batch_size
        self._engine: Any = None
        self.tokenizer = self.runner.tokenizer
        self.model = self.runner.model
        self.prompt_ids = [
            list(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                )["input_ids"]
            )
            for p in PROMPTS
        ]

    def prompts(self, n: int) -> list[list[int]]:
        return [self.prompt_ids[i % len(self.prompt_ids)] for i in range(n)]

    # (a) llmstream engine
    def engine(self, n: int, spread: float) -> list[Trace]:
        from llmstream_inference.engine import Engine, EngineConfig, Finished, TokenDelta
        from llmstream_inference.sampling import Defaults, resolve

        from llmstream.wire import SamplingParams

        engine = self._engine
        if engine is None:  # one engine for the whole run, as in a server
            engine = self._engine = Engine(
                self.runner, EngineConfig(max_batch_size=self.max_batch_size)
            )
            engine.start()
        sampling = resolve(SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0), Defaults())

        async def one(ids: list[int], delay: float) -> Trace:
            await asyncio.sleep(delay)
            trace = Trace(time.perf_counter())
            async for event in engine.open(ids, sampling):
                if isinstance(event, TokenDelta):
                    trace.tokens.append(time.perf_counter())
                elif isinstance(event, Finished):
                    trace.count = event.completion_tokens
            return trace

        async def run() -> list[Trace]:
            offsets = arrival_offsets(n, spread)
            return list(
                await asyncio.gather(
                    *(one(p, o) for p, o in zip(self.prompts(n), offsets, strict=True))
                )
            )

        return asyncio.run(run())

    def close(self) -> None:
        if self._engine is not None:
            self._engine.stop()

    # (b) one thread per request, generate + TextIteratorStreamer
    def threads(self, n: int, spread: float) -> list[Trace]:
        from transformers import TextIteratorStreamer

        traces: list[Trace] = []
        lock = threading.Lock()

        def one(ids: list[int], delay: float) -> None:
            time.sleep(delay)
            trace = Trace(time.perf_counter())
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True)
            original_put = streamer.put

            calls = [0]

            def put(value: torch.Tensor) -> None:  # the prompt first, then every new token
                if calls[0]:
                    trace.tokens.append(time.perf_counter())
                calls[0] += 1
                original_put(value)

            streamer.put = put  # type: ignore[method-assign]
            worker = threading.Thread(
                target=self.model.generate,
                kwargs={
                    "input_ids": torch.tensor([ids], device=self.runner.device),
                    "max_new_tokens": NEW_TOKENS,
                    "do_sample": False,
                    "streamer": streamer,
                },
            )
            worker.start()
            for _ in streamer:
                pass
            worker.join()
            with lock:
                traces.append(trace)

        offsets = arrival_offsets(n, spread)
        workers = [
            threading.Thread(target=one, args=(p, o))
            for p, o in zip(self.prompts(n), offsets, strict=True)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return traces

    # (c) static batched generate
    def static(self, n: int) -> list[Trace]:
        from transformers import LogitsProcessor, LogitsProcessorList

        steps: list[float] = []

        class StepClock(LogitsProcessor):
            def __call__(
                self, input_ids: torch.LongTensor, scores: torch.FloatTensor
            ) -> torch.FloatTensor:
                steps.append(time.perf_counter())
                return scores

        self.tokenizer.padding_side = "left"
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = self.tokenizer.pad({"input_ids": self.prompts(n)}, return_tensors="pt")
        batch = batch.to(self.runner.device)
        start = time.perf_counter()
        out = self.model.generate(
            **batch,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=pad,
            logits_processor=LogitsProcessorList([StepClock()]),
        )
        new = out[:, batch["input_ids"].shape[1] :]
        eos = self.runner.eos_ids
        traces = []
        for row in new.tolist():
            length = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            traces.append(Trace(start, steps[:length]))
        return traces

    # (d) transformers' continuous batching
    def hf_cb(self, n: int, spread: float) -> list[Trace]:
        from transformers import GenerationConfig

        config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False)
        manager = self.model.init_continuous_batching(generation_config=config)
        manager.start()
        traces: dict[str, Trace] = {}
        try:
            offsets = arrival_offsets(n, spread)
            readers = []
            for i, (ids, delay) in enumerate(zip(self.prompts(n), offsets, strict=True)):
                time.sleep(delay - (offsets[i - 1] if i else 0.0))
                trace = Trace(time.perf_counter())
                rid = manager.add_request(
                    ids, request_id=f"r{i}", max_new_tokens=NEW_TOKENS, streaming=True
                )
                traces[str(rid)] = trace

                def read(rid: str = str(rid), trace: Trace = trace) -> None:
                    seen = 0
                    for output in manager.request_id_iter(rid):
                        now = time.perf_counter()
                        count = len(output.generated_tokens)
                        trace.tokens.extend([now] * (count - seen))
                        seen = count

                reader = threading.Thread(target=read)
                reader.start()
                readers.append(reader)
            for reader in readers:
                reader.join(600)
        finally:
            manager.stop(block=True)
        return list(traces.values())


def plot(results: list[Result], path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    designs = sorted(
        {r.design for r in results}, key=["engine", "threads", "static", "hf-cb"].index
    )
    levels = sorted({r.streams for r in results})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(designs)
    for k, design in enumerate(designs):
        rows = {r.streams: r for r in results if r.design == design}
        present = [lv for lv in levels if lv in rows]
        xs = [levels.index(lv) + k * width for lv in present]
        left.bar(xs, [rows[lv].tokens_per_s for lv in present], width, label=design)
        right.plot(present, [rows[lv].ttft_p95_s for lv in present], marker="o", label=design)
    left.set_xticks([i + 0.4 - width / 2 for i in range(len(levels))], [str(lv) for lv in levels])
    left.set_xlabel("concurrent streams")
    left.set_ylabel("aggregate tokens/s")
    left.set_title(f"Throughput (SmolLM2-135M, {where}, 64 greedy tokens)")
    left.legend()
    right.set_xlabel("concurrent streams")
    right.set_ylabel("TTFT p95 (s)")
    right.set_title("Time to first token, p95")
    right.set_yscale("log")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--hf-cb-levels", type=int, nargs="*", default=[8])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every design")
    parser.add_argument("--spread", type=float, default=0.25, help="arrival window (s)")
    parser.add_argument("--model", type=Path, default=None, help="default: the embedded model")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:n] (as the server)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    parser.add_argument(
        "--max-batch-size", type=int, default=16, help="the engine's sequences per step"
    )
    args = parser.parse_args(argv)

    from llmstream_inference.models.default import pull_default

    model_dir = args.model or pull_default()
    bench = Bench(model_dir, args.threads, args.device, args.dtype, args.max_batch_size)
    bench.engine(2, 0.0)  # warm-up of every code path before measuring
    bench.static(2)
    results: list[Result] = []
    for n in args.levels:
        runs: list[tuple[str, Callable[[], list[Trace]]]] = [
            ("engine", partial(bench.engine, n, args.spread)),
            ("threads", partial(bench.threads, n, args.spread)),
            ("static", partial(bench.static, n)),
        ]
        if n in args.hf_cb_levels:
            runs.append(("hf-cb", partial(bench.hf_cb, n, args.spread)))
        for design, run in runs:
            print(f">> {design:8s} {n:2d} streams ...", end=" ", flush=True, file=sys.stderr)
            try:
                result = summarise(design, run())
            except Exception as exc:  # a failing baseline is reported, not fatal
                print(f"failed: {exc}", file=sys.stderr)
                continue
            results.append(result)
            print(
                f"{result.tokens_per_s:6.1f} tok/s, TTFT p95 {result.ttft_p95_s:.2f}s",
                file=sys.stderr,
            )

    bench.close()
    by = {(r.design, r.streams): r for r in results}
    checks: dict[str, Any] = {}
    if ("engine", 8) in by and ("threads", 8) in by and ("static", 8) in by:
        engine8 = by[("engine", 8)]
        checks = {
            "engine_vs_threads_at_8": engine8.tokens_per_s / by[("threads", 8)].tokens_per_s,
            "engine_vs_static_at_8": engine8.tokens_per_s / by[("static", 8)].tokens_per_s,
            "engine_ttft_p95_at_8_s": engine8.ttft_p95_s,
        }
        checks["targets_met"] = (
            checks["engine_vs_threads_at_8"] >= 3.0
            and checks["engine_vs_static_at_8"] >= 0.8
            and checks["engine_ttft_p95_at_8_s"] <= 1.5
        )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "inference",
        "model": str(model_dir),
        "torch_threads": args.threads,
        "device": str(bench.runner.device),
        "dtype": str(bench.runner.dtype).removeprefix("torch."),
        "engine_max_batch_size": args.max_batch_size,
        "new_tokens": NEW_TOKENS,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": torch.get_num_threads(),
        },
        "results": [asdict(r) for r in results],
        "checks": checks,
    }
    (args.out / "inference.json").write_text(json.dumps(report, indent=2) + "\n")
    where = "CPU" if bench.runner.device.type == "cpu" else torch.cuda.get_device_name()
    plot(results, args.out / "inference.png", f"{where}, {report['dtype']}")
    print("\n| design | streams | tok/s | TTFT p50 | TTFT p95 | ITL p50 | ITL p95 |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.design} | {r.streams} | {r.tokens_per_s:.1f} | {r.ttft_p50_s:.3f} | "
            f"{r.ttft_p95_s:.3f} | {r.itl_p50_s:.3f} | {r.itl_p95_s:.3f} |"
        )
    print(json.dumps(checks, indent=2))
    print(f"wrote {args.out / 'inference.json'} and {args.out / 'inference.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
