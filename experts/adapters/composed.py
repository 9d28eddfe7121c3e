"""Composed adapters: a stack, delta blend or MoE mix folded into ONE ordinary PEFT LoRA adapter.

An engine that serves one LoRA per request (vLLM, issue 14) cannot run our compositions directly,
but every delta-space composition is a weighted sum of low-rank deltas, and a sum of low-rank
deltas is itself low rank::

    sum_i w_i * s_i * B_i @ A_i  ==  B_cat @ A_cat,   A_cat = [A_1; ...; A_n]      # [R, in]
                                                      B_cat = [w_1 s_1 B_1, ...]  # [out, R]

with R = sum of the adapters' ranks and scale 1 (written as ``lora_alpha = r = R``). This is PEFT's
``add_weighted_adapter(combination_type="cat")``, exact, with no SVD truncation. The only difference
is that the weight and scale are folded into B instead of A; the product is the same. Every
adapter keeps a fixed block of R in every module (zeros where it has no such module or a smaller
``rank_pattern`` rank), so the layout does not depend on the module.

Composed adapters are keyed by their canonical composition (sorted names, weights rounded to
:data:`WEIGHT_DECIMALS`), so the router's soft weights do not mint a new adapter per request. They
are written once per key into a per-replica cache folder bounded by count and bytes (LRU).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from loraplex.experts.adapters.loader import CONFIG_FILE, SAFETENSORS_FILE, LoraAdapter
from loraplex.experts.errors import CompositionError

COMPOSITION_FILE = "loraplex_composition.json"
WEIGHT_DECIMALS = 3  # 0.3333 and 0.3334 are one composed adapter; 0.333 and 0.334 are two


@dataclass(frozen=True)
class ComposedAdapter:
    """``{module: (A [R, in], B [out, R])}`` at scale 1, plus what it was composed from."""

    key: str
    rank: int
    modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    parts: tuple[tuple[str, float], ...]

    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.modules.values())


def canonical_parts(weights: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """Sorted ``(name, weight)`` with weights rounded to :data:`WEIGHT_DECIMALS`; zero weights drop out."""
    parts = tuple(sorted((n, round(float(w), WEIGHT_DECIMALS)) for n, w in weights.items()))
    return tuple((n, w) for n, w in parts if w != 0.0)


def composition_key(weights: Mapping[str, float]) -> str:
    """A folder-safe key of the canonical composition, e.g. ``cat-3f1c9a0b2d4e``."""
    text = ",".join(f"{n}={w:.{WEIGHT_DECIMALS}f}" for n, w in canonical_parts(weights))
    return "cat-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def compose(adapters: Mapping[str, LoraAdapter], weights: Mapping[str, float], max_rank: int) -> ComposedAdapter:
    """Fold ``sum_i weights[i] * delta_i`` into one adapter. Raises :class:`CompositionError` (HTTP 400) when
    the summed rank exceeds ``max_rank``, naming both numbers, or when a weight names no loaded adapter."""
    parts = canonical_parts(weights)
    if not parts:
        raise CompositionError("a composed adapter needs at least one adapter with a non-zero weight")
    missing = sorted(n for n, _ in parts if n not in adapters)
    if missing:
        raise CompositionError(f"cannot compose {missing}: not loaded (loaded: {sorted(adapters)})")
    rank = sum(adapters[n].rank for n, _ in parts)
    if rank > max_rank:
        ranks = ", ".join(f"{n} r={adapters[n].rank}" for n, _ in parts)
        raise CompositionError(
            f"the composed adapter would have rank {rank} ({ranks}), above this group's max_lora_rank {max_rank}; "
            "compose fewer adapters or raise max_lora_rank"
        )
    names = sorted({m for n, _ in parts for m in adapters[n].modules})
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in names:
        blocks_a, blocks_b = [], []
        fan_in = fan_out = None
        for n, _ in parts:
            if module in adapters[n].modules:
                A, B, _scale = adapters[n].modules[module]
                fan_in, fan_out = A.shape[1], B.shape[0]
        for n, w in parts:
            r = adapters[n].rank
            A_cat = torch.zeros(r, fan_in)  # [r_i, in]
            B_cat = torch.zeros(fan_out, r)  # [out, r_i]
            if module in adapters[n].modules:
                A, B, scale = adapters[n].modules[module]
                A_cat[: A.shape[0]] = A
                B_cat[:, : B.shape[1]] = B * (w * scale)
            blocks_a.append(A_cat)
            blocks_b.append(B_cat)
        modules[module] = (torch.cat(blocks_a, 0).contiguous(), torch.cat(blocks_b, 1).contiguous())
    return ComposedAdapter(composition_key(dict(parts)), rank, modules, parts)


def write_peft(composed: ComposedAdapter, folder: Path, base_model: str | None = None) -> Path:
    """Write ``composed`` as a PEFT adapter folder (``PeftModel.from_pretrained`` and vLLM load it as is).
    Written into a sibling temp folder and renamed, so a reader never sees half an adapter."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {}
    for module, (A, B) in composed.modules.items():
        state[f"base_model.model.{module}.lora_A.weight"] = A
        state[f"base_model.model.{module}.lora_B.weight"] = B
    save_file(state, str(tmp / SAFETENSORS_FILE))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": composed.rank,
        "lora_alpha": composed.rank,  # scale alpha / r = 1: the weights and scales are in B
        "use_rslora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in composed.modules}),
        "base_model_name_or_path": base_model,
    }
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    # What it was made of, beside (not inside) the PEFT config: PEFT and vLLM warn on unknown config keys.
    parts = {"combination": "cat", "parts": [list(p) for p in composed.parts], "rank": composed.rank}
    (tmp / COMPOSITION_FILE).write_text(json.dumps(parts, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


class ComposedAdapterCache:
    """Per-replica folder of composed adapters, bounded by count and bytes, least recently used out first.

    ``get(weights, build)`` returns the folder for the canonical composition and *leases* it, calling
    ``build()`` (which returns a :class:`ComposedAdapter`) and writing it only on a miss; ``release(key)``
    ends the lease. A leased folder is never evicted (the engine may still load it from disk: vLLM reads a
    LoRA's files when its first request is scheduled), so the bounds can be exceeded while every entry is
    leased, and are restored at the next release. ``on_evict(key)`` lets the engine drop its copy (vLLM:
    remove the LoRA) when a folder leaves the cache.
    """

    def __init__(
        self,
        root: Path,
        max_count: int = 64,
        max_bytes: int = 1 << 30,
        base_model: str | None = None,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError(f"max_count and max_bytes must be >= 1 (got {max_count}, {max_bytes})")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_count, self.max_bytes = max_count, max_bytes
        self.base_model = base_model
        self.on_evict = on_evict
        self._entries: OrderedDict[str, int] = OrderedDict()  # key -> bytes, oldest first
        self._leases: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(self._entries.values())

    def get(
        self, weights: Mapping[str, float], build: Callable[[], ComposedAdapter], tag: str = ""
    ) -> tuple[str, Path]:
        """``(key, folder)`` of the composition, leased until ``release(key)``. ``tag`` names what else the
        folder depends on (the engine passes its parts' versions on disk: a re-registered part is a new key, and
        the stale folder ages out, even while requests still use it)."""
        key = composition_key(weights) + (f"-{hashlib.sha256(tag.encode()).hexdigest()[:8]}" if tag else "")
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
                composed = build()
                size = composed.nbytes()
                if size > self.max_bytes:
                    raise CompositionError(
                        f"the composed adapter needs {size} bytes, above the cache's max_bytes {self.max_bytes}"
                    )
                write_peft(composed, self.root / key, self.base_model)
                self._entries[key] = size
            self._leases[key] += 1
            self._evict()
            return key, self.root / key

    def release(self, key: str) -> None:
        with self._lock:
            self._leases[key] -= 1
            if self._leases[key] <= 0:
                del self._leases[key]
            self._evict()

    def drop(self, key: str) -> bool:
        """Forget ``key`` now if unleased (e.g. one of its parts changed on disk); False if it is leased."""
        with self._lock:
            if key not in self._entries or self._leases[key]:
                return key not in self._entries
            self._remove(key)
            return True

    def _evict(self) -> None:
        while len(self._entries) > self.max_count or sum(self._entries.values()) > self.max_bytes:
            key = next((k for k in self._entries if not self._leases[k]), None)
            if key is None:  # everything is leased: over the bound until a lease ends
                return
            self._remove(key)
            self.evictions += 1

    def _remove(self, key: str) -> None:
        del self._entries[key]
        shutil.rmtree(self.root / key, ignore_errors=True)
        if self.on_evict is not None:
            self.on_evict(key)

    def keys(self) -> Sequence[str]:
        return list(self._entries)

    def leased(self) -> int:
        with self._lock:
            return len(self._leases)
