"""Named compositions: a composition object stored under a name that clients call as `model`.

Two sources. The app config's `compositions:` is read-only at run time. `POST /v1/compositions` adds
compositions at run time; they are persisted in the managed root (`FILE`, atomically replaced under a
file lock every ingress process honours), so they survive ingress restarts and every ingress replica sees
a change on its next lookup (one `stat`). Validation (adapters exist, no shadowing, no nesting, rank and
slot limits of the group that runs it) is the planner's (`Gateway.check_composition`): it knows the
adapters and the groups. This class only stores.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

from loraplex.config.app import NamedComposition
from loraplex.experts.composition import adapters_of, parse_composition
from loraplex.experts.errors import ConflictError, RequestError, UnknownCompositionError

FILE = ".loraplex-compositions.json"  # {"compositions": {name: NamedComposition JSON}}
LOCK = ".loraplex-compositions.lock"


class CompositionBook:
    def __init__(self, configured: Mapping[str, NamedComposition], managed_root: Path | str | None):
        self.configured = dict(configured)
        self.managed_root = Path(managed_root) if managed_root is not None else None
        self._lock = threading.Lock()
        self._stamp: object = ()
        self._runtime: dict[str, NamedComposition] = {}

    # ---- lookups -----------------------------------------------------------------------------
    def get(self, name: object) -> NamedComposition | None:
        if not isinstance(name, str):
            return None
        if name in self.configured:
            return self.configured[name]
        return self._read().get(name)

    def all(self) -> dict[str, tuple[NamedComposition, str]]:
        """`{name: (composition, "config" | "registered")}`, sorted by name."""
        out = {n: (c, "config") for n, c in self.configured.items()}
        out.update({n: (c, "registered") for n, c in self._read().items()})
        return dict(sorted(out.items()))

    def using(self, adapter: str) -> list[str]:
        """Compositions that use `adapter` (an adapter removal is refused while any does)."""
        return sorted(n for n, (c, _) in self.all().items() if adapter in adapters_of(parse_composition(c.spec())))

    # ---- run-time changes --------------------------------------------------------------------
    def register(self, name: str, composition: NamedComposition) -> None:
        with self._edit() as runtime:
            if name in self.configured or name in runtime:
                raise ConflictError(
                    f"composition {name!r} already exists; DELETE /v1/compositions/{name} first or pick another name"
                    if name in runtime
                    else f"composition {name!r} is defined in the app config; change it there"
                )
            runtime[name] = composition

    def remove(self, name: str) -> None:
        with self._edit() as runtime:
            if name in self.configured:
                raise ConflictError(f"composition {name!r} is defined in the app config; remove it there")
            if name not in runtime:
                raise UnknownCompositionError(name, sorted(self.configured) + sorted(runtime))
            del runtime[name]

    # ---- persistence -------------------------------------------------------------------------
    def _path(self) -> Path:
        if self.managed_root is None:
            raise RequestError("run-time compositions are off; set import_roots in the app config (a managed root)")
        return self.managed_root / FILE

    def _read(self) -> dict[str, NamedComposition]:
        if self.managed_root is None:
            return {}
        path = self.managed_root / FILE
        try:
            st = path.stat()
            stamp: object = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            with self._lock:
                self._runtime = self._load(path) if stamp is not None else {}
                self._stamp = stamp
        return self._runtime

    @staticmethod
    def _load(path: Path) -> dict[str, NamedComposition]:
        data = json.loads(path.read_text())
        return {n: NamedComposition(**c) for n, c in data.get("compositions", {}).items()}

    @contextmanager
    def _edit(self):
        path = self._path()
        with self._lock, open(path.parent / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                runtime = self._load(path) if path.is_file() else {}
                yield runtime
                tmp = path.parent / f"{FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
                body = {n: c.model_dump(exclude_none=True) for n, c in sorted(runtime.items())}
                tmp.write_text(json.dumps({"compositions": body}, indent=1))
                os.replace(tmp, path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._stamp = ()  # re-read on the next lookup
