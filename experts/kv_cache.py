"""Preallocated KV cache of one replica: a fixed set of rows, so joining and leaving a batch are index updates.

HF's `DynamicCache` grows by concatenation: every decode step copies each layer's keys and values, and
a request joining a running batch needs its cache left-padded and concatenated onto everyone else's.
Here every virtual row of the decoder owns one cache row for its whole life (`allocate` / `release`),
writes its keys at its own positions, and attention reads a view `[:span, :, :length]` of the buffer,
so nothing is copied per step or per join. The buffer is sized `rows x length` once; `length` doubles
when a row outgrows it (one copy, amortised over the tokens that needed it), so memory follows the
longest sequence actually served rather than the model's context length.

Rows are handed out lowest-first, which keeps the live rows packed at the front: attention over
`[:span]` then wastes little on free rows.
"""

from __future__ import annotations

import heapq

import torch


class KVCache:
    """Keys and values of every layer: `keys[layer]: [rows, kv_heads, length, head_dim]`."""

    def __init__(
        self,
        layers: int,
        rows: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        length: int = 64,
    ):
        self.rows, self.kv_heads, self.head_dim = rows, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.length = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._layers = layers
        self._free = list(range(rows))  # a heap: lowest free row first
        self.ensure(length)

    @property
    def free_rows(self) -> int:
        return len(self._free)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def ensure(self, length: int) -> None:
        """Make room for positions `[0, length)` in every row (doubling; existing entries are kept)."""
        if length <= self.length:
            return
        new = max(length, 2 * self.length, 16)
        shape = (self.rows, self.kv_heads, new, self.head_dim)
        keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self._layers)]
        values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self._layers)]
        if self.length:
            for old, fresh in zip(self.keys + self.values, keys + values):
                fresh[:, :, : self.length].copy_(old)
        self.keys, self.values, self.length = keys, values, new

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError(f"all {self.rows} KV cache rows are in use")  # the scheduler's row budget prevents it
        return heapq.heappop(self._free)

    def release(self, row: int) -> None:
        heapq.heappush(self._free, row)

    def reset(self) -> None:
        self._free = list(range(self.rows))

    def copy_prefix(self, src: int, dst: list[int], length: int) -> None:
        """Give rows `dst` the first `length` positions of row `src` (the sampled copies of one prompt)."""
        idx = torch.tensor(dst, dtype=torch.long, device=self.device)
        for t in self.keys + self.values:
            t[idx, :, :length] = t[src, :, :length]
