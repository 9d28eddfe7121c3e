"""Swap in a retrained router without restarting the ingress: by an admin call or when the files change.

Why here and not in `router/`: reloading is a serving concern (which replica, when, what to do with a
broken file); `router/` only knows how to load one. The new router is loaded and checked in full
(its experts must exist in the adapter roots) *before* the swap, which is one attribute assignment:
a request routes with whichever router it read, old or new, never a half-loaded one. A broken
retrain leaves the old router serving and the error is reported to the caller.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from loraplex.experts.errors import LoraplexError, RouterReloadError, as_error
from loraplex.router.router import CONFIG_FILE, WEIGHTS_FILE, Router

log = logging.getLogger(__name__)

Version = tuple[int, ...]


def files_version(path: Path) -> Version:
    """Changes when `router.json` or `router.safetensors` is rewritten (mtime and size of both)."""
    out: list[int] = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            st = (Path(path) / name).stat()
        except FileNotFoundError:
            continue
        out += [st.st_mtime_ns, st.st_size]
    return tuple(out)


class RouterReloader:
    """Owns the path, the version of the router that serves, and the swap into `install(router)`."""

    def __init__(
        self, path: str | Path, current: Router, install: Callable[[Router], None], check: Callable[[Router], None]
    ):
        self.path = Path(path)
        self.current = current
        self.version = files_version(self.path)
        self.reloads = 0
        self._install, self._check = install, check
        self._lock = threading.Lock()  # one reload at a time (admin call and poll thread)
        self._stop = threading.Event()

    def reload(self, force: bool = False) -> dict:
        """Load, check and swap in the router on disk (if its files changed, or always with `force`)."""
        with self._lock:
            version = files_version(self.path)
            if version == self.version and not force:
                return self._state(False)
            try:
                spec_same = self._spec() == self.current.featurizer.spec()
                new = Router.load(self.path, featurizer=self.current.featurizer if spec_same else None)
                self._check(new)
            except Exception as e:
                err = as_error(e)
                raise RouterReloadError(
                    f"router at {str(self.path)!r} was not swapped in; the old one serves: {err}"
                ) from e
            self._install(new)
            self.current, self.version = new, version
            self.reloads += 1
            log.info("router reloaded from %s: experts %s", self.path, new.experts)
            return self._state(True)

    def _spec(self) -> dict | None:
        try:
            return json.loads((self.path / CONFIG_FILE).read_text()).get("featurizer")
        except (OSError, ValueError):
            return None

    def _state(self, reloaded: bool) -> dict:
        return {
            "reloaded": reloaded,
            "reloads": self.reloads,
            "experts": list(self.current.experts),
            "path": str(self.path),
        }

    def poll(self, interval_s: float) -> threading.Thread:
        """Check for changed files every `interval_s` seconds on a daemon thread (errors are logged, not fatal)."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.reload()
                except LoraplexError as e:
                    log.error("%s", e)

        thread = threading.Thread(target=loop, name="loraplex-router-reload", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
