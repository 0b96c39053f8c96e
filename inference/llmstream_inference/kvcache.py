"""A key/value cache shared by every running sequence, right-aligned for continuous batching.

Each running sequence owns one row (a slot). All rows end at the same column, `end`, so one
decode step writes every sequence's new key/value into the same column and the model sees a
plain left-padded batch; a 2-D mask marks which columns of each row are real. Joining and
leaving cost one row copy, never a copy of the whole batch: a leaving row is replaced by the
last row, and a joining prompt is written into the columns just before `end` (the window's
start moves left over columns that are masked out for everyone else).

The window [start, end) only grows to the right while sequences run; it is compacted (shifted
to column 0) when it reaches the end of the buffer.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _Window:
    """Columns [start, end) of the buffers that the current batch uses."""

    def __init__(self) -> None:
        self.start = 0
        self.end = 0

    @property
    def length(self) -> int:
        return self.end - self.start


class _SlotLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]
    """One transformer layer's keys and values: buffers [max_batch, heads, capacity, dim]."""

    def __init__(self, window: _Window, rows: list[int]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._window = window
        self._rows = rows  # one-element list shared with the owner: the current batch size
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("slot layers are allocated by BatchKVCache, not lazily")

    def buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value buffers (allocated by the owning BatchKVCache)."""
        if self.kbuf is None or self.vbuf is None:
            raise RuntimeError("slot layer used before its buffers were allocated")
        return self.kbuf, self.vbuf

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.buffers()
        rows, w = self._rows[0], self._window
        n = key_states.shape[-2]
        keys[:rows, :, w.end : w.end + n] = key_states
        values[:rows, :, w.end : w.end + n] = value_states
        return keys[:rows, :, w.start : w.end + n], values[:rows, :, w.start : w.end + n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._window.length + query_length, 0

    def get_seq_length(self) -> int:
        return self._window.length

    def get_max_length(self) -> int:
        return -1


class BatchKVCache(Cache):
    """The running batch's cache; row i belongs to the i-th running sequence.

    `device` holds the mask and position ids (the model's input device); each layer's buffers
    live on the device of the keys first added for that layer, which differs per layer when
    the model is split across GPUs.
    """

    def __init__(
        self,
        num_layers: int,
        max_batch: int,
        capacity: int,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.window = _Window()
        self._rows = [0]
        super().__init__(layers=[_SlotLayer(self.window, self._rows) for _ in range(num_layers)])
        self.max_batch = max_batch
        self.capacity = capacity
        self.device = device
        self.dtype = dtype
        self.mask = torch.zeros(max_batch, capacity, dtype=torch.bool, device=device)
        self.row_lengths: list[int] = []

    @property
    def rows(self) -> int:
        """Number of rows (running sequences)."""
        return self._rows[0]

    def _slot_layers(self) -> list[_SlotLayer]:
        return [layer for layer in self.layers if isinstance(layer, _SlotLayer)]

    def _allocate(self, per_layer: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for layer, (keys, _) in zip(self._slot_layers(), per_layer, strict=True):
            shape = (self.max_batch, keys.shape[1], self.capacity, keys.shape[3])
            # On the device the layer's keys were computed on: a model split across GPUs
            # keeps each layer's cache next to its weights. zeros, not empty: masked-out
            # columns still enter q·k, and NaN garbage would survive the mask.
            layer.kbuf = torch.zeros(shape, dtype=self.dtype, device=keys.device)
            layer.vbuf = torch.zeros(shape, dtype=self.dtype, device=keys.device)

    def _move_window(self, new_start: int, capacity: int | None = None) -> None:
        """Copy the window's columns so they begin at `new_start` (optionally in new buffers)."""
        w, rows = self.window, self.rows
        length = w.length
        cap = capacity or self.capacity
        for layer in self._slot_layers():
            moved = []
            for old in layer.buffers():
                new = (
                    old
                    if cap == self.capacity
                    else old.new_zeros(*old.shape[:2], cap, old.shape[3])
                )
                new[:rows, :, new_start : new_start + length] = old[
                    :rows, :, w.start : w.end
                ].clone()
                moved.append(new)
            layer.kbuf, layer.vbuf = moved
        mask = torch.zeros(self.max_batch, cap, dtype=torch.bool, device=self.device)
        mask[:rows, new_start : new_start + length] = self.mask[:rows, w.start : w.end]
        self.mask, self.capacity = mask, cap
        w.start, w.end = new_start, new_start + length

    def reserve(self, columns: int) -> None:
        """Make sure `columns` more columns fit after `end` (compacting or growing)."""
        w = self.window
        if w.end + columns <= self.capacity:
            return
        needed = w.length + columns
        capacity = self.capacity if needed <= self.capacity else max(needed, 2 * self.capacity)
        self._move_window(0, capacity)

    def add_row(self, per_layer: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Append a prefilled sequence (per layer keys/values [1, heads, length, dim]).

        Returns its row index.
        """
        if self.rows >= self.max_batch:
            raise RuntimeError("batch is full")
        length = per_layer[0][0].shape[-2]
        w = self.window
        if self.rows == 0:
            if self._slot_layers()[0].kbuf is None or length + 1 > self.capacity:
                self.capacity = max(self.capacity, 2 * length)
                self.mask = torch.zeros(
                    self.max_batch, self.capacity, dtype=torch.bool, device=self.device
                )
                self._allocate(per_layer)
            w.start = w.end = length
        elif length > w.end:
            # Not enough columns left of `end`: shift the window right to make room.
            shift = length - w.end
            needed = length + 1
            capacity = self.capacity if needed <= self.capacity else max(needed, 2 * self.capacity)
            self._move_window(w.start + shift, capacity)
        row = self.rows
        for layer, (k, v) in zip(self._slot_layers(), per_layer, strict=True):
            keys, values = layer.buffers()
            keys[row, :, w.end - length : w.end] = k[0]
            values[row, :, w.end - length : w.end] = v[0]
        self.mask[row].zero_()
        self.mask[row, w.end - length : w.end] = True
        w.start = min(w.start, w.end - length)
        self.row_lengths.append(length)
        self._rows[0] = row + 1
        return row

    def remove_row(self, row: int) -> None:
        """Drop a row; the last row moves into its place (callers re-index the same way)."""
        last = self.rows - 1
        if row != last:
            for layer in self._slot_layers():
                keys, values = layer.buffers()
                keys[row] = keys[last]
                values[row] = values[last]
            self.mask[row] = self.mask[last]
            self.row_lengths[row] = self.row_lengths[last]
        self.mask[last].zero_()
        self.row_lengths.pop()
        self._rows[0] = last
        w = self.window
        if last == 0:
            w.start = w.end = 0
        else:
            w.start = w.end - max(self.row_lengths)

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask [rows, window+1] and position ids [rows, 1] for one decode step."""
        self.reserve(1)
        w, rows = self.window, self.rows
        self.mask[:rows, w.end] = True
        positions = torch.tensor(self.row_lengths, dtype=torch.long, device=self.device)
        return self.mask[:rows, w.start : w.end + 1], positions.unsqueeze(1)

    def advance(self) -> None:
        """Commit the column written by the last decode step."""
        self.window.end += 1
        self.row_lengths = [n + 1 for n in self.row_lengths]
