"""Adapters by name: safe lookup under configured roots, a host-memory tier and a device-slot tier.

Two bounded LRU tiers, like S-LoRA's unified pool but per replica: many adapters wait validated in
host memory, a few sit in the device slots the batched layers read. An adapter is always loaded and
validated on the host before a slot is evicted for it, so a broken adapter costs one failed request,
not a good adapter's slot.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from loraplex.experts.adapters.index import inside_root, scan_roots
from loraplex.experts.adapters.loader import CONFIG_FILE, PICKLE_FILE, SAFETENSORS_FILE, LoraAdapter, load_adapter
from loraplex.experts.adapters.sources import HubSource, check_hub_ref, is_hub_ref
from loraplex.experts.errors import AdapterNameError, CapacityError, ConfigError, UnknownAdapterError

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def find_adapters(roots: Sequence[Path | str]) -> list[str]:
    """Adapter names under `roots` by a full walk (`index.AdapterIndex` keeps them without walking per call)."""
    return sorted(scan_roots(roots))


def adapter_exists(roots: Sequence[Path | str], name: str) -> bool:
    """Whether some root holds adapter `name` (one stat per root, no walk)."""
    segments = check_name(name)
    return any((Path(r).resolve().joinpath(*segments) / CONFIG_FILE).is_file() for r in roots)


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


def adapter_folder(roots: Sequence[Path | str], name: str, known: Callable[[], Iterable[str]] | None = None) -> Path:
    """The folder of adapter `name` in the first root holding it; rejects names (and symlinks) that leave a root.
    `known` lists the adapters for the unknown-adapter error (default: a walk of the roots)."""
    segments = check_name(name)
    for root in (Path(r).resolve() for r in roots):
        candidate = root.joinpath(*segments)
        if (candidate / CONFIG_FILE).is_file():
            if not inside_root(root, candidate) or not inside_root(root, candidate / CONFIG_FILE):
                raise AdapterNameError(
                    f"adapter {name!r} resolves outside its root {str(root)!r} (symlink); refusing it"
                )
            return candidate
    raise UnknownAdapterError(name, known() if known is not None else find_adapters(roots))


class SlotBackend(Protocol):
    """What the store needs from the model: somewhere to write adapters (`WrappedModel`)."""

    num_slots: int

    def write_slot(self, slot: int, modules: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]]) -> None: ...


Version = tuple[int, ...]  # identity of an adapter's files on disk (inode, mtime, size of config and weights)
SlotKey = tuple[str, Version]  # one version of one adapter: what a device slot holds


def file_version(path: Path) -> Version:
    """Changes whenever the adapter folder's files are replaced (registration writes a new folder and renames it)."""
    out: list[int] = []
    for f in (CONFIG_FILE, SAFETENSORS_FILE, PICKLE_FILE):
        try:
            st = (path / f).stat()
        except FileNotFoundError:
            continue
        out += [st.st_ino, st.st_mtime_ns, st.st_size]
    return tuple(out)


@dataclass(frozen=True)
class Lease:
    """Slots that running rows read: the store never rewrites them until `AdapterStore.release(lease)`."""

    slots: dict[str, int]  # adapter name -> slot
    keys: tuple[SlotKey, ...]


class AdapterLoading(Exception):
    """Not an error: some adapters of a lease are still loading on the loader thread. The scheduler parks
    the request (it holds no batch row meanwhile) and retries once every future is done."""

    def __init__(self, futures: list[Future]):
        super().__init__(f"{len(futures)} adapter(s) loading")
        self.futures = futures


KNOWN_TTL_S = 30.0
LOADER_NICENESS = 10
LOAD_SAMPLES = 2048  # recent load times kept for quantiles (the Prometheus counters keep the totals)


@dataclass
class StoreStats:
    host_hits: int = 0
    host_misses: int = 0
    host_joins: int = 0  # lookups that joined a load already in flight (single-flight)
    device_hits: int = 0
    device_misses: int = 0
    evictions_host: int = 0
    evictions_device: int = 0
    load_seconds: float = 0.0
    load_failures: int = 0
    slot_write_seconds: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def _background_priority() -> None:
    """Loader threads run at a lower CPU priority than the engine thread (Linux schedules threads one by one):
    on a busy replica a load may take longer, but it takes less of the decode step's cores."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: plain priority
        pass


def quantiles(samples: Iterable[float]) -> dict[str, float | None]:
    xs = sorted(samples)
    if not xs:
        return {"p50": None, "p99": None, "n": 0}
    return {"p50": xs[len(xs) // 2], "p99": xs[min(len(xs) - 1, int(0.99 * len(xs)))], "n": len(xs)}


class AdapterStore:
    """Finds, validates and caches adapters; leases device slots to running rows.

    Three tiers: device slots (what the batched layers read), host memory (validated tensors, LRU) and
    disk (local roots, or the Hub's cache for hub references). Disk -> host loading and validation run on a
    loader thread, single-flight per adapter: concurrent requests for one cold adapter share one load, and
    the engine thread never reads a file. `lease` only copies host tensors into free slots; when an adapter
    is not in host memory yet it raises `AdapterLoading` with the futures to wait on instead of blocking.

    Both tiers key on the adapter's *version* on disk, not only its name: an adapter removed and
    registered again under the same name with new weights is reloaded, never served from a stale
    cache. Leases live here, so nothing (an eviction, a removal, a reload) rewrites a slot that a
    running row still reads; an old version's slot is reused only after its last lease is released.
    """

    def __init__(
        self,
        roots: Sequence[Path | str],
        module_shapes: Mapping[str, tuple[int, int]],
        backend: SlotBackend,
        max_rank: int,
        host_capacity: int,
        allow_pickle: bool = False,
        hub: HubSource | None = None,
        loader_threads: int = 1,
    ):
        problems = []
        self.roots = [Path(r).resolve() for r in roots]
        for r in self.roots:
            if not r.is_dir():
                problems.append(f"adapter root {str(r)!r} is not a directory")
        if host_capacity < backend.num_slots:
            problems.append(
                f"host_capacity ({host_capacity}) must be >= the number of device slots ({backend.num_slots})"
            )
        if problems:
            raise ConfigError(problems)
        self.module_shapes = dict(module_shapes)
        self.backend = backend
        self.max_rank = max_rank
        self.host_capacity = host_capacity
        self.allow_pickle = allow_pickle
        self.hub = hub
        self.stats = StoreStats()
        self._host: OrderedDict[str, tuple[Version, LoraAdapter]] = OrderedDict()
        self._slots: OrderedDict[SlotKey, int] = OrderedDict()  # LRU order
        self._leases: Counter[SlotKey] = Counter()
        self._current: dict[str, Version] = {}  # the version on disk when last looked up (absent: removed)
        self._hub_paths: dict[str, Path] = {}  # hub reference -> its snapshot folder in the Hub cache, once fetched
        self._loading: dict[str, Future] = {}  # adapter -> its load in flight
        self._pool = ThreadPoolExecutor(
            max(1, loader_threads), thread_name_prefix="loraplex-adapter-loader", initializer=_background_priority
        )
        self.load_epoch = 0  # bumped when a load starts or ends: "did a load run during this step?"
        self._load_s: deque[float] = deque(maxlen=LOAD_SAMPLES)  # disk -> host, per load
        self._write_s: deque[float] = deque(maxlen=LOAD_SAMPLES)  # host -> slot, per slot write
        self._known_names: tuple[float, list[str]] = (-float("inf"), [])
        self._lock = threading.RLock()

    @property
    def num_slots(self) -> int:
        return self.backend.num_slots

    @property
    def loads_in_flight(self) -> int:
        return len(self._loading)

    # ---- names and paths -------------------------------------------------------------------
    def available(self) -> list[str]:
        return find_adapters(self.roots)

    def resolve(self, name: str) -> Path:
        """The folder of local adapter `name`; rejects names that could leave the roots."""
        return adapter_folder(self.roots, name, self._known)

    def _known(self) -> list[str]:
        """The names an unknown-adapter error lists: a walk at most every `KNOWN_TTL_S`, because this runs on
        the engine thread and a walk of thousands of folders would stall decoding."""
        t, names = self._known_names
        if time.monotonic() - t > KNOWN_TTL_S:
            names = find_adapters(self.roots)
            self._known_names = (time.monotonic(), names)
        return names

    def check(self, name: str) -> None:
        """Raise unless `name` can be served: a local adapter, or a hub reference the config allows (not
        fetched here: that happens on the loader thread)."""
        self._locate(name)

    def _locate(self, name: str) -> Path | None:
        """The adapter's folder (stats only), or None for a hub reference not fetched yet."""
        if is_hub_ref(name):
            check_hub_ref(self.hub, name)
            return self._hub_paths.get(name)
        try:
            return self.resolve(name)
        except UnknownAdapterError:
            if self.hub is not None and self.hub.matches(name):  # `org/name`: not local, so the Hub
                return self._hub_paths.get(name)
            self._host.pop(name, None)  # removed at run time: forget it (leased slots stay until released)
            self._current.pop(name, None)
            self._drop_unleased(lambda key: key[0] == name)
            raise

    # ---- host tier ---------------------------------------------------------------------------
    def load(self, name: str) -> Future:
        """A future of `(version, adapter)`: done at once on a host hit, else the load in flight (one per
        adapter, shared by every caller). Raises at once for names that can never load (unknown, unsafe)."""
        with self._lock:
            path = self._locate(name)
            if path is not None:
                version = file_version(path)
                self._current[name] = version
                cached = self._host.get(name)
                if cached is not None and cached[0] == version:
                    self.stats.host_hits += 1
                    self._host.move_to_end(name)
                    done: Future = Future()
                    done.set_result(cached)
                    return done
            inflight = self._loading.get(name)
            if inflight is not None:
                self.stats.host_joins += 1
                return inflight
            self.stats.host_misses += 1
            self.load_epoch += 1
            fut = self._pool.submit(self._load, name, path)
            self._loading[name] = fut  # _load pops it under this lock, so never before it is set
            return fut

    def get(self, name: str) -> LoraAdapter:
        """The validated adapter, from host memory or disk (blocks until loaded; not for the engine thread)."""
        return self.load(name).result()[1]

    def get_versioned(self, name: str) -> tuple[Version, LoraAdapter]:
        """`get`, with the version of the files it was loaded from (engines that key their own caches on it)."""
        return self.load(name).result()

    def _load(self, name: str, path: Path | None) -> tuple[Version, LoraAdapter]:
        """On the loader thread: fetch (hub), read and validate, then publish into the host tier."""
        t0 = time.perf_counter()
        fetched = path is None  # _locate returns None only for hub references not fetched yet
        try:
            if path is None:
                if self.hub is None:
                    raise AdapterNameError(f"{name!r}: hub sources are off")
                path = self.hub.fetch(name)
            version = file_version(path)
            adapter = load_adapter(name, path, self.module_shapes, self.max_rank, self.allow_pickle)
        except BaseException:
            with self._lock:
                self.stats.load_failures += 1
                self._loading.pop(name, None)
                self.load_epoch += 1
            raise
        dt = time.perf_counter() - t0
        with self._lock:
            self._loading.pop(name, None)
            self.load_epoch += 1
            if fetched:
                self._hub_paths[name] = path  # the snapshot folder: later lookups stat it like a local folder
            self._current[name] = version
            self.stats.load_seconds += dt
            self._load_s.append(dt)
            self._host.pop(name, None)
            while len(self._host) >= self.host_capacity:  # slot copies live on the device, plain LRU is safe
                self._host.popitem(last=False)
                self.stats.evictions_host += 1
            self._host[name] = (version, adapter)
            self._drop_unleased(lambda key: key[0] == name and key[1] != version)  # older versions' slots
        return version, adapter

    # ---- device tier -------------------------------------------------------------------------
    def lease(self, names: Iterable[str]) -> Lease:
        """Slots for all `names` at once, held until `release`. Evicts only unleased slots, least recently
        used first; raises `CapacityError` when the unleased slots cannot hold the missing adapters, and
        `AdapterLoading` when some adapter is not in host memory yet (its load is then in flight)."""
        wanted = list(dict.fromkeys(names))
        with self._lock:
            if len(wanted) > self.num_slots:
                raise CapacityError(
                    f"a batch needs {len(wanted)} distinct adapters but the replica has {self.num_slots} slots"
                )
            loads = {n: self.load(n) for n in wanted}  # validate before evicting
            pending = [f for f in loads.values() if not f.done()]
            if pending:
                raise AdapterLoading(pending)
            versions = {n: f.result() for n, f in loads.items()}  # a failed load raises its error here
            keys = {n: (n, versions[n][0]) for n in wanted}
            missing = [n for n in wanted if keys[n] not in self._slots]
            wanted_keys = set(keys.values())
            evictable = [k for k in self._slots if k not in wanted_keys and not self._leases[k]]  # LRU first
            free = [s for s in range(self.num_slots) if s not in set(self._slots.values())]
            if len(missing) > len(free) + len(evictable):
                raise CapacityError(
                    f"{len(missing)} adapters need a slot but {self.num_slots - len(free) - len(evictable)} of "
                    f"{self.num_slots} slots are leased by running rows; retry when they finish"
                )
            for n in wanted:
                if keys[n] in self._slots:
                    self.stats.device_hits += 1
                    self._slots.move_to_end(keys[n])
            for n in missing:
                self.stats.device_misses += 1
                if free:
                    slot = free.pop(0)
                else:
                    slot = self._slots.pop(evictable.pop(0))
                    self.stats.evictions_device += 1
                t0 = time.perf_counter()
                self.backend.write_slot(slot, versions[n][1].modules)
                dt = time.perf_counter() - t0
                self.stats.slot_write_seconds += dt
                self._write_s.append(dt)
                self._slots[keys[n]] = slot
            for k in wanted_keys:
                self._leases[k] += 1
            return Lease({n: self._slots[keys[n]] for n in wanted}, tuple(wanted_keys))

    def release(self, lease: Lease) -> None:
        with self._lock:
            for k in lease.keys:
                self._leases[k] -= 1
                if self._leases[k] <= 0:
                    del self._leases[k]
            self._drop_unleased(lambda key: self._is_stale(key))

    def acquire(self, names: Iterable[str]) -> dict[str, int]:
        """Load `names` into slots without holding them (start-up, warm-up, tests): waits for their loads; a
        later lease may evict them."""
        names = list(names)
        while True:
            try:
                lease = self.lease(names)
                break
            except AdapterLoading as e:
                wait_futures(e.futures)
                for f in e.futures:
                    f.result()  # a failed load raises its error here instead of loading again
        self.release(lease)
        return lease.slots

    def leased(self) -> int:
        """Slots running rows hold now."""
        with self._lock:
            return len(self._leases)

    def resident(self) -> dict[str, int]:
        """Adapters currently in device slots, LRU first."""
        with self._lock:
            return {name: slot for (name, _), slot in self._slots.items()}

    def cached(self) -> list[str]:
        with self._lock:
            return list(self._host)

    def loading(self) -> list[str]:
        with self._lock:
            return list(self._loading)

    def timings(self) -> dict[str, dict[str, float | None]]:
        """Recent disk -> host load and host -> slot write times (seconds), p50/p99."""
        with self._lock:
            return {"disk_to_host": quantiles(self._load_s), "host_to_slot": quantiles(self._write_s)}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _is_stale(self, key: SlotKey) -> bool:
        """A slot holding a version that is no longer the one on disk (removed, or replaced)."""
        return self._current.get(key[0]) != key[1]

    def _drop_unleased(self, match) -> None:
        for key in [k for k in self._slots if match(k) and not self._leases[k]]:
            del self._slots[key]
