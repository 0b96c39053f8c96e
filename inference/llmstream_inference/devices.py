"""Where the model's weights go when a replica sees several GPUs.

A replica that asks for N GPUs gets N visible CUDA devices; with `--device auto` or `cuda` the
model is split across all of them, layer by layer (each GPU runs its own contiguous range of
decoder blocks in turn). The decision is pure: a model config, each device's memory and the
load dtype in, a transformers `device_map` out, so it is tested on machines without a GPU.

The rules (`assign`):

- fewer than two devices: no map (the model loads whole on the one device, as before);
- each device keeps `HEADROOM` of its memory free for the KV cache, activations and CUDA's
  own workspace; the rest is usable for weights;
- weights larger than the usable memory of all devices together are an error that names the
  sizes and what to change;
- the modules before the first decoder block (embeddings) go to the first device, those after
  the last (final norm, LM head) to the last device; a module whose weights are tied to another
  (a tied LM head) goes with it;
- decoder blocks stay whole and contiguous, and are spread so that each device's share of the
  weights is proportional to its usable memory (so each keeps the same fraction free for its
  layers' KV cache): laid end to end, a block goes to the device whose share its midpoint
  falls in;
- if that proportional split overfills a device (a large head on a small last device), the
  devices are filled in order instead; if whole blocks still do not fit, that is an error.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

HEADROOM = 0.2  # share of each GPU's free memory that weights may not use
GIB = 1 << 30


class DeviceMapError(ValueError):
    """The model cannot be split over the visible devices; the message says what to change."""


@dataclass(frozen=True)
class Unit:
    """A part of the model that one device holds whole, in the model's forward order."""

    name: str  # module or parameter name, as a transformers device_map key
    nbytes: int  # its weights in the load dtype (0 when they are another unit's, tied)
    block: bool = False  # a repeated decoder block (spread) rather than the stem or head
    tied_to: str | None = None  # the unit whose weights it shares: it must sit on its device


def shards(requested: str) -> bool:
    """`auto` and a bare `cuda` use every visible GPU; `cuda:<n>` and `cpu` pin one device."""
    return requested in ("auto", "cuda")


def visible_gpu_memory() -> list[int]:
    """Free bytes on each visible CUDA device, in index order (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(index)[0] for index in range(torch.cuda.device_count())]


def plan_device_map(
    config: Any, memory: Sequence[int], dtype: torch.dtype, *, headroom: float = HEADROOM
) -> dict[str, int] | None:
    """A device map for a causal LM with `config`, over devices with `memory` bytes each.

    Returns None for fewer than two devices; raises DeviceMapError when the model does not fit.
    """
    if len(memory) < 2:
        return None
    return assign(model_units(config, dtype), memory, headroom=headroom, dtype=dtype)


def model_units(config: Any, dtype: torch.dtype) -> list[Unit]:
    """The model's units (stem, decoder blocks, head) and their sizes in `dtype`.

    The model is built on the meta device: no memory, no weights, no GPU.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    block_classes = set(getattr(model, "_no_split_modules", None) or ())
    if not block_classes:
        raise DeviceMapError(
            f"{type(model).__name__} does not name its decoder blocks (_no_split_modules), so "
            "it cannot be split across GPUs; pin it to one GPU with --device cuda:0"
        )
    owners: dict[int, str] = {}  # id of a parameter or buffer -> the unit that holds it
    units: list[Unit] = []

    def add(
        name: str, module: torch.nn.Module | None, own: Sequence[torch.Tensor], block: bool
    ) -> None:
        """A unit of `module`'s parameters and buffers (or of the tensors `own`)."""
        parameters = list(module.parameters()) if module is not None else []
        buffers = list(module.buffers()) if module is not None else []
        nbytes, tied_to = 0, None
        for tensor in [*parameters, *buffers, *own]:
            if id(tensor) in owners:
                tied_to = tied_to or owners[id(tensor)]
                continue
            owners[id(tensor)] = name
            converted = isinstance(tensor, torch.nn.Parameter) and tensor.is_floating_point()
            nbytes += tensor.numel() * (dtype.itemsize if converted else tensor.element_size())
        units.append(Unit(name, nbytes, block, tied_to if nbytes == 0 else None))

    def has_block(module: torch.nn.Module) -> bool:
        return any(type(m).__name__ in block_classes for m in module.modules())

    def visit(prefix: str, module: torch.nn.Module) -> None:
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for name, tensor in own:
            add(prefix + name, None, [tensor], block=False)
        for name, child in module.named_children():
            block = type(child).__name__ in block_classes
            if block or not has_block(child):
                add(prefix + name, child, [], block=block)
            else:
                visit(f"{prefix}{name}.", child)

    visit("", model)
    return units


def assign(
    units: Sequence[Unit],
    memory: Sequence[int],
    *,
    headroom: float = HEADROOM,
    dtype: torch.dtype | None = None,
) -> dict[str, int] | None:
    """Place `units` on devices with `memory` bytes each, by the rules in the module docstring."""
    if len(memory) < 2:
        return None
    if not any(unit.block for unit in units):
        raise DeviceMapError("the model has no decoder blocks to spread across GPUs")
    usable = [int(m * (1 - headroom)) for m in memory]
    total = sum(unit.nbytes for unit in units)
    if total > sum(usable):
        in_dtype = f" in {str(dtype).removeprefix('torch.')}" if dtype is not None else ""
        raise DeviceMapError(
            f"the model's weights need {total / GIB:.1f} GiB{in_dtype}, but the {len(memory)} "
            f"visible GPUs have {sum(usable) / GIB:.1f} GiB for weights ({headroom:.0%} of each "
            f"GPU's {_sizes(memory)} GiB free memory is kept for the KV cache and activations); "
            "give the replica more or larger GPUs, or serve a smaller model or dtype"
        )
    share = [total * u / sum(usable) for u in usable]
    placed = _place(units, share, usable)
    if placed is None:
        placed = _place(units, [float(u) for u in usable], usable)
    if placed is None:
        largest = max(unit.nbytes for unit in units)
        raise DeviceMapError(
            f"the model's weights ({total / GIB:.1f} GiB) fit the GPUs' {sum(usable) / GIB:.1f} "
            "GiB for weights only if a part were cut in two (layers, embeddings and head stay "
            f"whole; the largest is {largest / GIB:.2f} GiB; per GPU: {_sizes(usable)} GiB); "
            "give the replica larger GPUs, or serve a smaller model or dtype"
        )
    return placed


def _place(units: Sequence[Unit], target: list[float], usable: list[int]) -> dict[str, int] | None:
    """Stem on the first device, head on the last, blocks walked across devices by `target`.

    None when a device ends up holding more than its usable memory.
    """
    blocks = [i for i, unit in enumerate(units) if unit.block]
    last = len(target) - 1
    ends = list(itertools.accumulate(target))  # device d covers bytes [ends[d-1], ends[d])
    where: dict[str, int] = {}
    load = [0] * len(target)
    device, position = 0, 0
    for i, unit in enumerate(units):
        if i > blocks[-1]:
            device = last
        elif i >= blocks[0]:
            while device < last and (
                position + unit.nbytes / 2 > ends[device]
                or load[device] + unit.nbytes > usable[device]
            ):
                device += 1
        position += unit.nbytes
        where[unit.name] = device
        load[device] += unit.nbytes
    for unit in units:  # tied units hold no bytes of their own: move them, loads unchanged
        if unit.tied_to in where:
            where[unit.name] = where[unit.tied_to]
    if any(used > limit for used, limit in zip(load, usable, strict=True)):
        return None
    return where


def describe(device_map: dict[str, int]) -> str:
    """One line per device, runs of numbered blocks collapsed: `cuda:0: model.layers.0-13, …`."""
    by_device: dict[int, list[str]] = {}
    for name, device in device_map.items():
        by_device.setdefault(device, []).append(name)
    return "; ".join(
        f"cuda:{device}: {', '.join(_collapse(names))}"
        for device, names in sorted(by_device.items())
    )


def _collapse(names: list[str]) -> Iterator[str]:
    run: tuple[str, int, int] | None = None  # prefix, first and last number of a run
    for name in names:
        match = re.fullmatch(r"(.*\.)(\d+)", name)
        if match and run and match[1] == run[0] and int(match[2]) == run[2] + 1:
            run = (run[0], run[1], int(match[2]))
            continue
        if run:
            yield _run_text(run)
            run = None
        if match:
            run = (match[1], int(match[2]), int(match[2]))
        else:
            yield name
    if run:
        yield _run_text(run)


def _run_text(run: tuple[str, int, int]) -> str:
    prefix, low, high = run
    return f"{prefix}{low}" if low == high else f"{prefix}{low}-{high}"


def _sizes(values: Sequence[int]) -> str:
    return "/".join(f"{v / GIB:.0f}" if v >= GIB else f"{v / GIB:.2f}" for v in values)
