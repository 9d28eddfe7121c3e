"""Run-time adapter registration: copy a PEFT folder from an allowed import root into the managed root.

The managed root is an adapter root every expert replica reads, so a registered adapter is visible to
every group at once and survives replica restarts (it is on disk, not in a replica's memory). The
adapter is fully validated against the base model's layer shapes before it becomes visible: the
shapes come from the model config on the meta device, so the ingress never loads weights.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from loraplex.experts.adapters import routing_examples
from loraplex.experts.adapters.index import MARKER, read_journal, scan_roots, write_journal
from loraplex.experts.adapters.loader import CONFIG_FILE, SAFETENSORS_FILE, load_adapter
from loraplex.experts.adapters.store import adapter_exists, check_name, find_adapters
from loraplex.experts.errors import (
    AdapterNameError,
    ConflictError,
    PayloadTooLargeError,
    RequestError,
    UnknownAdapterError,
)
from loraplex.experts.lora.targets import target_linears

LOCK_FILE = ".loraplex-index.lock"  # flock'd around every journal update: ingress replicas are processes


def linear_shapes(base_model: str, target_modules: Sequence[str]) -> dict[str, tuple[int, int]]:
    """`{module: (in, out)}` of the model's target linears, built on the meta device (no weights loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base_model)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return {n: (m.in_features, m.out_features) for n, m in target_linears(model, target_modules).items()}


class AdapterRegistry:
    def __init__(
        self,
        managed_root: Path | str,
        import_roots: Sequence[Path | str],
        roots: Sequence[Path | str],
        module_shapes: Mapping[str, tuple[int, int]],
        max_rank: int,
        pinned: Sequence[str] = (),
        max_adapter_mb: float = 512.0,
        in_use: Callable[[str], list[str]] | None = None,
    ):
        self.managed_root = Path(managed_root).resolve()
        self.import_roots = [Path(r).resolve() for r in import_roots]
        self.roots = list(roots)
        self.module_shapes = dict(module_shapes)
        self.max_rank = max_rank
        self.pinned = set(pinned)
        self.max_bytes = int(max_adapter_mb * 2**20)
        self.in_use = in_use  # names of the compositions using an adapter: removal is refused while any does
        self._lock = threading.Lock()

    @contextmanager
    def _journal(self):
        """The registered names, under a lock every ingress process honours; the block edits the set in place."""
        with self._lock, open(self.managed_root / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                names = read_journal(self.managed_root)
                if names is None:  # first registration since this version: registered folders start the journal
                    names = [n for n, e in scan_roots([self.managed_root]).items() if (e.path / MARKER).is_file()]
                names_set = set(names)
                yield names_set
                write_journal(self.managed_root, names_set)  # the change every index sees on its next lookup
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _source(self, source: str) -> Path:
        path = Path(source).resolve()
        if not any(path.is_relative_to(root) for root in self.import_roots):
            roots = [str(r) for r in self.import_roots]
            raise AdapterNameError(f"source {source!r} is outside the allowed import roots {roots}")
        if not path.is_dir():
            raise RequestError(f"source {source!r} is not a folder")
        return path

    def register(self, name: str, source: str, examples: list[str] | None = None) -> dict:
        """Validate, then copy atomically. `examples` (routing example prompts) are written as the adapter's
        `routing_examples.jsonl`; without them, a `routing_examples.jsonl` shipped in the source is copied."""
        segments = check_name(name)
        src = self._source(source)
        prompts = (
            routing_examples.check_examples(examples) if examples is not None else routing_examples.read_examples(src)
        )
        weights = src / SAFETENSORS_FILE
        if weights.is_file() and weights.stat().st_size > self.max_bytes:
            raise PayloadTooLargeError(
                f"adapter weights are {weights.stat().st_size} bytes; the limit is {self.max_bytes}"
            )
        adapter = load_adapter(
            name, src, self.module_shapes, self.max_rank, allow_pickle=False
        )  # raises AdapterValidationError
        with self._journal() as registered:
            if adapter_exists(self.roots, name):
                raise ConflictError(
                    f"adapter {name!r} already exists; DELETE /v1/adapters/{name} first or pick another name"
                )
            dest = self.managed_root.joinpath(*segments)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.managed_root))
            for f in (CONFIG_FILE, SAFETENSORS_FILE):
                shutil.copy2(src / f, tmp / f)
            if prompts:
                routing_examples.write_examples(tmp, prompts)
            (tmp / MARKER).write_text(json.dumps({"source": str(src)}))
            tmp.rename(dest)  # atomic: replicas never see a half-copied adapter
            registered.add(name)
        return {
            "name": name,
            "rank": adapter.rank,
            "modules": len(adapter.modules),
            "path": str(dest),
            "routing_examples": len(prompts),
        }

    def remove(self, name: str) -> dict:
        segments = check_name(name)
        with self._journal() as registered:
            dest = self.managed_root.joinpath(*segments)
            if name in self.pinned:
                raise ConflictError(f"adapter {name!r} is pinned to an expert group in the config; remove it there")
            users = self.in_use(name) if self.in_use is not None else []
            if users:
                raise ConflictError(
                    f"adapter {name!r} is used by composition(s) {users}; DELETE /v1/compositions/<name> (or edit the "
                    "config) first"
                )
            if not (dest / MARKER).is_file():
                if adapter_exists(self.roots, name):
                    raise ConflictError(
                        f"adapter {name!r} was not registered at run time; only registered adapters can be removed"
                    )
                raise UnknownAdapterError(name, find_adapters(self.roots))
            shutil.rmtree(dest)
            registered.discard(name)
        return {"name": name, "deleted": True}
