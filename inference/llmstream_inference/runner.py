"""The model runner: load a causal LM and run one forward pass (prefill chunk or decode step).

It knows tensors and nothing about requests, HTTP or scheduling.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from .devices import describe, plan_device_map, shards, visible_gpu_memory
from .kvcache import BatchKVCache

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class RunnerConfig:
    """Where and how the model runs."""

    device: str = "auto"  # auto | cpu | cuda[:n]; auto and cuda split over every visible GPU
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default


def pick_device(requested: str) -> torch.device:
    """`auto` means CUDA when available, else CPU; an unavailable CUDA request is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available here")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU."""
    if requested == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if requested not in DTYPES:
        raise ValueError(f"dtype {requested!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[requested]


class ModelRunner:
    """A loaded model plus its tokenizer; forward passes only.

    Inputs go to `device` and logits come back on it; with several visible GPUs (`auto` or
    `cuda`) the model is split layer by layer across them (`device_map`, see `devices`) and
    `device` is the GPU holding the embeddings.
    """

    def __init__(self, folder: Path, config: RunnerConfig = RunnerConfig()) -> None:
        started = time.monotonic()
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(folder))
        self.device_map: dict[str, int] | None = None
        if self.device.type == "cuda" and shards(config.device):
            self.device_map = plan_device_map(
                AutoConfig.from_pretrained(str(folder)), visible_gpu_memory(), self.dtype
            )
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=self.dtype, attn_implementation="sdpa", device_map=self.device_map
        )
        if self.device_map is None:
            self.model: Any = model.to(self.device)
        else:
            self.model = model
            self.device = model.get_input_embeddings().weight.device
            log.info(
                "split %s over %d GPUs: %s",
                folder,
                len(set(self.device_map.values())),
                describe(self.device_map),
            )
        self.model.eval()
        text_config = self.model.config.get_text_config(decoder=True)
        layer_types = getattr(text_config, "layer_types", None) or []
        if any(kind != "full_attention" for kind in layer_types):
            raise ValueError(
                f"model at {folder} uses {sorted(set(layer_types))} layers; the llmstream engine "
                "supports decoder-only models with full attention in every layer"
            )
        self.num_layers: int = text_config.num_hidden_layers
        self.max_positions: int = getattr(text_config, "max_position_embeddings", 2048)
        self.vocab_size: int = int(text_config.vocab_size)
        self.eos_ids = self._eos_ids()
        self.load_seconds = time.monotonic() - started
        log.info(
            "loaded %s on %s (%s) in %.1fs", folder, self.device, self.dtype, self.load_seconds
        )

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(int(i) for i in source)
        return frozenset(ids)

    def new_batch(self, max_batch: int, capacity: int = 512) -> BatchKVCache:
        """An empty batch cache for up to `max_batch` sequences."""
        return BatchKVCache(
            self.num_layers, max_batch, capacity, device=self.device, dtype=self.dtype
        )

    @torch.inference_mode()
    def prefill(
        self, ids: list[int], cache: DynamicCache | None, start: int
    ) -> tuple[DynamicCache, torch.Tensor]:
        """Run prompt tokens `ids` (positions from `start`) into `cache`; logits of the last."""
        cache = cache if cache is not None else DynamicCache(config=self.model.config)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(ids), device=self.device).unsqueeze(0)
        out = self.model(
            input_ids=input_ids,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[0, -1, :]
        return cache, logits.to(self.device)

    @torch.inference_mode()
    def prefill_batch(
        self, prompts: list[list[int]]
    ) -> list[tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]]:
        """Prefill whole prompts in one left-padded forward pass (cheaper than one by one).

        Returns, per prompt, its per-layer (keys, values) without padding and its last logits.
        """
        longest = max(len(ids) for ids in prompts)
        input_ids = torch.zeros(len(prompts), longest, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(prompts), longest, dtype=torch.long, device=self.device)
        for row, ids in enumerate(prompts):
            input_ids[row, longest - len(ids) :] = torch.tensor(ids, device=self.device)
            mask[row, longest - len(ids) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        layers = self.cache_rows(cache)
        last_logits = out.logits[:, -1, :].to(self.device)
        results = []
        for row, ids in enumerate(prompts):
            start = longest - len(ids)  # this row's padding ends here
            kv = [(k[row : row + 1, :, start:], v[row : row + 1, :, start:]) for k, v in layers]
            results.append((kv, last_logits[row]))
        return results

    @staticmethod
    def cache_rows(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values) of a single-sequence prefill cache."""
        rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer in cache.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if keys is None or values is None:
                raise ValueError("prefill cache has a layer without keys/values")
            rows.append((keys, values))
        return rows

    @torch.inference_mode()
    def decode(self, batch: BatchKVCache, tokens: list[int]) -> torch.Tensor:
        """One decode step for every row of `batch`; returns logits [rows, vocab]."""
        mask, positions = batch.step_inputs()
        input_ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=batch,
            use_cache=True,
            logits_to_keep=1,
        )
        batch.advance()
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits.to(self.device)  # a split model's head may sit on another GPU
