"""Keep one ingress replica's prototype head in step with the adapter roots and (opt-in) its traffic.

Every replica reads the same adapter roots, so a registration made through any replica is on disk for
all of them: an adapter folder's `routing_examples.jsonl` is the source of truth, and it survives
restarts. The adapter index (`experts.adapters.index`) knows each adapter's examples file and its
version: it re-reads the registry's journal when its stamp moves (one `stat` per lookup, so a
registration on another replica is routable on the next request here) and rescans the roots in the
background (files dropped in by hand). Only changed files are re-embedded; the head
(`router.prototypes.PrototypeHead`) is rebuilt only when the examples, the
router, the learned traffic or the set of removed trained adapters change, never per request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import torch

from loraplex.experts.adapters import routing_examples
from loraplex.experts.adapters.index import AdapterIndex
from loraplex.experts.adapters.store import adapter_folder
from loraplex.experts.errors import LoraplexError
from loraplex.router.policy import BASE
from loraplex.router.prototypes import ExampleBank, PrototypeHead
from loraplex.router.reservoir import Reservoir
from loraplex.router.router import Router

log = logging.getLogger(__name__)

FileVersion = tuple[int, int] | None


class RoutingExamples:
    def __init__(self, index: AdapterIndex, reservoir: Reservoir | None = None, traffic_min_examples: int = 8):
        self.index = index
        self.roots = list(index.roots)
        self.reservoir = reservoir
        self.traffic_min_examples = traffic_min_examples
        self._lock = threading.Lock()  # the routing thread and admin calls both refresh
        self._index_version = -1
        self._files: dict[str, FileVersion] = {}  # adapter -> version of its examples file
        self._files_version = 0  # bumped whenever a scan finds `_files` changed
        self._embedded: dict[str, tuple[FileVersion, object, torch.Tensor]] = {}  # -> (version, featurizer, feats)
        self._head_key: tuple | None = None
        self._head: PrototypeHead | None = None

    def head(self, router: Router, adapters: Sequence[str], force: bool = False) -> PrototypeHead | None:
        """The prototype head for `router` over the adapters now served (None: route on the trained head alone)."""
        with self._lock:
            if force or self.index.version != self._index_version:
                self._scan(adapters)
            # per request only this comparison: `adapters` is the gateway's cached list (same object until a
            # rescan), files and traffic carry version counters
            key = (router, adapters, self._files_version, self.reservoir.version if self.reservoir else 0)
            if key == self._head_key:
                return self._head
            for name in [n for n in self._embedded if n not in self._files]:
                del self._embedded[name]  # the adapter (or its examples file) is gone
            if self.reservoir is not None:
                for gone in [a for a in self.reservoir.seen() if a not in adapters]:
                    self.reservoir.forget(gone)
            bank = self._bank(router)
            unavailable = tuple(e for e in router.experts if e != BASE and e not in adapters)
            self._head = router.prototype_head(bank, unavailable) if len(bank) or unavailable else None
            # router compared by identity (and kept alive, so a new router can never look like the old one)
            self._head_key = (router, adapters, self._files_version, self.reservoir.version if self.reservoir else 0)
            return self._head

    def _scan(self, adapters: Sequence[str]) -> None:
        version = self.index.version  # read first: a change while we copy shows on the next call
        served = set(adapters)
        files = {n: v for n, v in self.index.example_versions().items() if n in served}
        if files != self._files:
            self._files_version += 1
        self._files, self._index_version = files, version

    def _bank(self, router: Router) -> ExampleBank:
        featurizer = router.featurizer
        for name, version in self._files.items():
            cached = self._embedded.get(name)
            if cached and cached[0] == version and cached[1] is featurizer:
                continue
            try:
                prompts = routing_examples.read_examples(adapter_folder(self.roots, name))
            except (OSError, LoraplexError) as e:  # a broken file must not break routing for everyone
                log.error("routing examples of adapter %r ignored: %s", name, e)
                continue
            if prompts:
                with torch.inference_mode():
                    self._embedded[name] = (version, featurizer, featurizer.encode(prompts))  # [examples, dim]
        bank = ExampleBank({n: feats for n, (_, _, feats) in self._embedded.items() if n in self._files})
        if self.reservoir is not None:
            trained = set(router.experts)
            for name, feats in self.reservoir.bank().tensors().items():
                if name not in trained and len(feats) < self.traffic_min_examples and name not in bank:
                    continue  # too few samples to stand as a class of its own yet
                bank.set(name, torch.cat([bank.tensors()[name], feats]) if name in bank else feats)
        return bank

    def learn(self, router: Router, adapter: str, text: str) -> bool:
        """Offer one addressed request to the reservoir; embeds it only if sampled. True if it was kept."""
        if self.reservoir is None:
            return False
        slot = self.reservoir.slot(adapter)
        if slot is None:
            return False
        with torch.inference_mode():
            self.reservoir.put(adapter, slot, router.featurizer.encode([text])[0])  # [dim]
        return True

    def counts(self) -> dict[str, dict[str, int]]:
        """`{adapter: {"registered": n, "traffic": n}}` for the adapters with any routing examples."""
        with self._lock:
            out = {n: {"registered": int(f.shape[0]), "traffic": 0} for n, (_, _, f) in self._embedded.items()}
        for name, n in (self.reservoir.counts() if self.reservoir else {}).items():
            out.setdefault(name, {"registered": 0, "traffic": 0})["traffic"] = n
        return out
