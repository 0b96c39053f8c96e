"""Splitting a model across GPUs: the device map for given device memories (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from llmstream_inference.devices import (
    GIB,
    DeviceMapError,
    Unit,
    assign,
    describe,
    model_units,
    plan_device_map,
    shards,
)
from llmstream_inference.kvcache import BatchKVCache
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

# Llama-3-8B and -70B shapes; SmolLM2-135M's (the default model: tied LM head).
LLAMA_8B = LlamaConfig(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
)  # fmt: skip
LLAMA_70B = LlamaConfig(
    hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
    num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
)  # fmt: skip
SMOLLM2 = LlamaConfig(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
)  # fmt: skip


@pytest.fixture(scope="module")
def units_8b() -> list[Unit]:
    return model_units(LLAMA_8B, torch.bfloat16)


@pytest.fixture(scope="module")
def units_70b() -> list[Unit]:
    return model_units(LLAMA_70B, torch.bfloat16)


def layers_on(device_map: dict[str, int], device: int) -> list[int]:
    return sorted(
        int(name.rsplit(".", 1)[1])
        for name, d in device_map.items()
        if name.startswith("model.layers.") and d == device
    )


def bytes_on(units: list[Unit], device_map: dict[str, int], device: int) -> int:
    return sum(unit.nbytes for unit in units if device_map[unit.name] == device)


def test_one_device_gets_no_map() -> None:
    assert plan_device_map(LLAMA_8B, [80 * GIB], torch.bfloat16) is None
    assert plan_device_map(LLAMA_8B, [], torch.bfloat16) is None


def test_only_auto_and_bare_cuda_split_across_gpus() -> None:
    assert shards("auto")
    assert shards("cuda")
    assert not shards("cuda:1")
    assert not shards("cpu")


def test_two_equal_gpus_hold_half_of_the_layers_each(units_8b: list[Unit]) -> None:
    device_map = assign(units_8b, [24 * GIB, 24 * GIB])
    assert device_map is not None
    assert layers_on(device_map, 0) == list(range(16))
    assert layers_on(device_map, 1) == list(range(16, 32))
    assert device_map["model.embed_tokens"] == 0
    assert device_map["model.norm"] == device_map["lm_head"] == 1


def test_four_gpus_each_hold_one_contiguous_quarter_of_a_70b_model(units_70b: list[Unit]) -> None:
    device_map = assign(units_70b, [80 * GIB] * 4)
    assert device_map is not None
    total = sum(unit.nbytes for unit in units_70b)
    block = max(unit.nbytes for unit in units_70b if unit.block)
    ranges = [layers_on(device_map, d) for d in range(4)]
    assert [n for r in ranges for n in r] == list(range(80))  # in order, each layer once
    for d in range(4):
        assert abs(bytes_on(units_70b, device_map, d) - total / 4) <= block


def test_uneven_gpus_hold_weights_in_proportion_to_their_memory(units_8b: list[Unit]) -> None:
    device_map = assign(units_8b, [24 * GIB, 80 * GIB])
    assert device_map is not None
    total = sum(unit.nbytes for unit in units_8b)
    block = max(unit.nbytes for unit in units_8b if unit.block)
    assert abs(bytes_on(units_8b, device_map, 0) - total * 24 / 104) <= block / 2
    assert len(layers_on(device_map, 0)) < len(layers_on(device_map, 1))


def test_a_model_too_big_for_the_gpus_is_an_error_naming_the_sizes(
    units_70b: list[Unit],
) -> None:
    with pytest.raises(DeviceMapError) as caught:
        assign(units_70b, [24 * GIB, 24 * GIB], dtype=torch.bfloat16)
    message = str(caught.value)
    assert "131.4 GiB in bfloat16" in message
    assert "2 visible GPUs have 38.4 GiB for weights" in message
    assert "more or larger GPUs" in message


def test_the_headroom_is_kept_free_for_the_kv_cache(units_70b: list[Unit]) -> None:
    # 131.4 GiB of weights would fit 2 x 80 GiB, but not the 80 % of it that weights may use.
    with pytest.raises(DeviceMapError, match="20% of each GPU"):
        assign(units_70b, [80 * GIB, 80 * GIB])
    assert assign(units_70b, [80 * GIB, 80 * GIB], headroom=0.1) is not None


def test_a_tied_lm_head_sits_with_the_embeddings() -> None:
    device_map = plan_device_map(SMOLLM2, [24 * GIB, 24 * GIB], torch.bfloat16)
    assert device_map is not None
    assert device_map["lm_head"] == device_map["model.embed_tokens"] == 0
    assert device_map["model.norm"] == 1
    assert layers_on(device_map, 0)
    assert layers_on(device_map, 1)


def test_when_the_proportional_split_overfills_a_gpu_they_are_filled_in_order() -> None:
    blocks = [Unit(f"model.layers.{i}", 4 * GIB, block=True) for i in range(3)]
    units = [*blocks, Unit("lm_head", 1 * GIB)]
    # Proportionally the third layer would land on a GPU too small for it.
    device_map = assign(units, [12 * GIB, 2 * GIB, 3 * GIB], headroom=0)
    assert device_map == {
        "model.layers.0": 0, "model.layers.1": 0, "model.layers.2": 0, "lm_head": 2,
    }  # fmt: skip


def test_layers_that_fit_only_when_cut_in_two_are_an_error() -> None:
    units = [Unit(f"model.layers.{i}", 6 * GIB, block=True) for i in range(3)]
    with pytest.raises(DeviceMapError, match="only if a part were cut in two"):
        assign(units, [10 * GIB, 10 * GIB], headroom=0)


def test_the_map_gives_every_weight_exactly_one_device(tiny_model_dir: Path) -> None:
    config = AutoConfig.from_pretrained(tiny_model_dir)
    device_map = plan_device_map(config, [1 * GIB, 1 * GIB], torch.float32)
    assert device_map is not None
    assert set(device_map.values()) == {0, 1}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    tensors = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, _ in tensors:
        owners = [key for key in device_map if name == key or name.startswith(key + ".")]
        assert len(owners) == 1, f"{name} is placed by {owners}"


def test_the_logged_map_collapses_runs_of_layers(units_8b: list[Unit]) -> None:
    device_map = assign(units_8b, [24 * GIB, 24 * GIB])
    assert device_map is not None
    assert describe(device_map) == (
        "cuda:0: model.embed_tokens, model.layers.0-15; "
        "cuda:1: model.layers.16-31, model.norm, model.rotary_emb, lm_head"
    )


def test_each_layer_cache_lives_on_the_device_of_its_keys() -> None:
    # "meta" stands in for a second GPU: a split model computes layer 1 somewhere else.
    cache = BatchKVCache(2, 4, 8, device=torch.device("cpu"), dtype=torch.float32)
    keys = [torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4, device="meta")]
    cache.add_row([(k, k.clone()) for k in keys])
    assert [layer.buffers()[0].device.type for layer in cache._slot_layers()] == ["cpu", "meta"]
    assert [layer.buffers()[1].device.type for layer in cache._slot_layers()] == ["cpu", "meta"]
    mask, positions = cache.step_inputs()
    assert mask.device.type == positions.device.type == "cpu"
