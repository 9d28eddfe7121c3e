"""Adapters by name: safe lookup under configured roots, a host-memory tier and a device-slot tier.

Two bounded LRU tiers, like S-LoRA's unified pool but per replica: many adapters wait validated in
host memory, a few sit in the device slots the batched layers read. An adapter is always loaded and
validated on the host before a slot is evicted for it, so a broken adapter costs one failed request,
not a good adapter's slot.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

import torch

from loraplex.experts.adapters.loader import CONFIG_FILE, LoraAdapter, load_adapter
from loraplex.experts.errors import AdapterNameError, CapacityError, ConfigError, UnknownAdapterError

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def find_adapters(roots: Sequence[Path | str]) -> list[str]:
    """Adapter names under `roots`: folders holding an adapter_config.json that stay inside their root."""
    names = set()
    for root in (Path(r).resolve() for r in roots):
        for cfg in root.rglob(CONFIG_FILE):
            rel = cfg.parent.relative_to(root).as_posix()
            if rel != "." and _inside(root, cfg.parent):
                names.add(rel)
    return sorted(names)


def check_name(name: object) -> list[str]:
    """The path segments of a safe adapter name; raises `AdapterNameError` for anything that could escape a root."""
    if not isinstance(name, str) or not name:
        raise AdapterNameError(f"adapter name must be a non-empty string, got {name!r}")
    segments = name.split("/")
    if name.startswith("/") or any(s in ("", ".", "..") or not _SEGMENT.match(s) for s in segments):
        raise AdapterNameError(
            f"invalid adapter name {name!r}: use letters, digits, '.', '_', '-' and '/' between parts; "
            "no absolute paths or '..'"
        )
    return segments


class SlotBackend(Protocol):
    """What the store needs from the model: somewhere to write adapters (`WrappedModel`)."""

    num_slots: int

    def write_slot(self, slot: int, modules: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]], name: str | None) -> None: ...


@dataclass
class StoreStats:
    host_hits: int = 0
    host_misses: int = 0
    device_hits: int = 0
    device_misses: int = 0
    evictions_host: int = 0
    evictions_device: int = 0
    load_seconds: float = 0.0
    load_failures: int = 0
    loads: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, float | int]:
        return {k: v for k, v in self.__dict__.items() if k != "loads"}


class AdapterStore:
    """Finds, validates and caches adapters; hands out device slots for a batch."""

    def __init__(
        self,
        roots: Sequence[Path | str],
        module_shapes: Mapping[str, tuple[int, int]],
        backend: SlotBackend,
        max_rank: int,
        host_capacity: int,
        allow_pickle: bool = False,
    ):
        problems = []
        self.roots = [Path(r).resolve() for r in roots]
        for r in self.roots:
            if not r.is_dir():
                problems.append(f"adapter root {str(r)!r} is not a directory")
        if host_capacity < backend.num_slots:
            problems.append(f"host_capacity ({host_capacity}) must be >= the number of device slots ({backend.num_slots})")
        if problems:
            raise ConfigError(problems)
        self.module_shapes = dict(module_shapes)
        self.backend = backend
        self.max_rank = max_rank
        self.host_capacity = host_capacity
        self.allow_pickle = allow_pickle
        self.stats = StoreStats()
        self._host: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._slots: OrderedDict[str, int] = OrderedDict()  # name -> slot, LRU order
        self._lock = threading.RLock()

    # ---- names and paths -------------------------------------------------------------------
    def available(self) -> list[str]:
        return find_adapters(self.roots)

    def resolve(self, name: str) -> Path:
        """The folder of adapter `name`; rejects names that could leave the roots."""
        segments = check_name(name)
        for root in self.roots:
            candidate = root.joinpath(*segments)
            if (candidate / CONFIG_FILE).is_file():
                if not _inside(root, candidate) or not _inside(root, candidate / CONFIG_FILE):
                    raise AdapterNameError(f"adapter {name!r} resolves outside its root {str(root)!r} (symlink); refusing it")
                return candidate
        raise UnknownAdapterError(name, self.available())

    # ---- host tier ---------------------------------------------------------------------------
    def get(self, name: str) -> LoraAdapter:
        """The validated adapter, from host memory or disk (LRU over `host_capacity` adapters)."""
        with self._lock:
            if name in self._host:
                if not (self._host[name].path / CONFIG_FILE).is_file():  # removed at run time
                    del self._host[name]
                    self._slots.pop(name, None)
                    raise UnknownAdapterError(name, self.available())
                self.stats.host_hits += 1
                self._host.move_to_end(name)
                return self._host[name]
            self.stats.host_misses += 1
            path = self.resolve(name)
            t0 = time.perf_counter()
            try:
                adapter = load_adapter(name, path, self.module_shapes, self.max_rank, self.allow_pickle)
            except Exception:
                self.stats.load_failures += 1
                raise
            self.stats.load_seconds += time.perf_counter() - t0
            while len(self._host) >= self.host_capacity:  # slot copies live on the device, plain LRU is safe
                self._host.popitem(last=False)
                self.stats.evictions_host += 1
            self._host[name] = adapter
            return adapter

    # ---- device tier -------------------------------------------------------------------------
    def acquire(self, names: Iterable[str], keep: Iterable[str] = ()) -> dict[str, int]:
        """Slots for all `names` at once; evicts least-recently-used slots in neither `names` nor `keep`.

        `keep` are the leases of a running batch: adapters whose slots rows still read mid-decode.
        """
        wanted = list(dict.fromkeys(names))
        keep = set(keep)
        with self._lock:
            if len(set(wanted) | keep) > self.backend.num_slots:
                raise CapacityError(
                    f"a batch needs {len(set(wanted) | keep)} distinct adapters but the replica has {self.backend.num_slots} slots"
                )
            adapters = {n: self.get(n) for n in wanted if n not in self._slots}  # validate before evicting
            result: dict[str, int] = {}
            for n in wanted:
                if n in self._slots:
                    self.stats.device_hits += 1
                    self._slots.move_to_end(n)
                    result[n] = self._slots[n]
            for n, adapter in adapters.items():
                self.stats.device_misses += 1
                used = set(self._slots.values())
                free = next((s for s in range(self.backend.num_slots) if s not in used), None)
                if free is None:
                    victim = next(v for v in self._slots if v not in wanted and v not in keep)
                    free = self._slots.pop(victim)
                    self.stats.evictions_device += 1
                self.backend.write_slot(free, adapter.modules, n)
                self._slots[n] = free
                result[n] = free
            return result

    def resident(self) -> dict[str, int]:
        """Adapters currently in device slots, LRU first."""
        with self._lock:
            return dict(self._slots)

    def cached(self) -> list[str]:
        with self._lock:
            return list(self._host)
