"""Adapter names under the roots, indexed: a request looks its adapter up in a dict, never walks the roots.

Walking every root per request (or every few seconds on the ingress's event loop) costs time linear in the
number of adapter folders; with thousands of adapters that is tens of milliseconds each time. The index
keeps the names in memory and learns about changes three ways:

- registrations and removals through `AdapterRegistry` rewrite the managed root's journal (`JOURNAL`,
  atomically replaced). Every index stats it on lookup (one `stat`) and re-reads it when it moved, so a
  registration on any ingress replica is visible to every replica at once;
- folders dropped into a root by hand are found by a full scan that runs on a background thread every
  `scan_interval_s` (never on a request's path);
- `refresh()` scans now (at start-up and in tests).

While the journal exists, registered folders (those holding the registry's marker) are known only from it:
a scan that started before a removal can never bring a removed adapter back.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loraplex.experts.adapters import routing_examples
from loraplex.experts.adapters.loader import CONFIG_FILE

log = logging.getLogger(__name__)

JOURNAL = ".loraplex-index.json"  # in the managed root: {"adapters": [registered names]}
MARKER = ".loraplex-registered.json"  # written into folders the registry created; only those can be removed

FileVersion = tuple[int, int] | None  # (mtime_ns, size) of an adapter's routing examples file; None: none


def journal_stamp(managed_root: Path | str) -> tuple[int, int] | None:
    """Changes whenever the registry registers or removes an adapter (the journal is replaced, so its inode
    changes); None while no registration ever happened."""
    try:
        st = (Path(managed_root) / JOURNAL).stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def read_journal(managed_root: Path | str) -> list[str] | None:
    try:
        data = json.loads((Path(managed_root) / JOURNAL).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:  # never half-written (atomic replace); unreadable: say so once
        log.error("adapter journal %s unreadable: %s", Path(managed_root) / JOURNAL, e)
        return None
    return [n for n in data.get("adapters", []) if isinstance(n, str)]


def write_journal(managed_root: Path | str, names: Iterable[str]) -> None:
    root = Path(managed_root)
    tmp = root / f"{JOURNAL}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps({"adapters": sorted(set(names))}))
    os.replace(tmp, root / JOURNAL)


def inside_root(root: Path, path: Path) -> bool:
    """Whether `path` resolves (symlinks followed) inside `root`."""
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _examples_version(folder: Path) -> FileVersion:
    try:
        st = (folder / routing_examples.FILE).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class Entry:
    path: Path
    examples: FileVersion


def scan_roots(roots: Sequence[Path | str], skip_registered: bool = False) -> dict[str, Entry]:
    """`{name: Entry}` for every folder holding an adapter_config.json below a root (the first root holding a
    name wins). Hidden folders (the registry's `.incoming-*` copies) are skipped; a symlinked folder counts
    only if it resolves inside its root; `skip_registered` leaves out folders holding the registry's marker."""
    found: dict[str, Entry] = {}
    for root in (Path(r).resolve() for r in roots):
        for top, dirs, files in os.walk(root):
            here = Path(top)
            if CONFIG_FILE in files and here != root:
                name = here.relative_to(root).as_posix()
                if not (skip_registered and MARKER in files):
                    found.setdefault(name, Entry(here, _examples_version(here)))
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for d in list(dirs):
                link = here / d
                if link.is_symlink():  # os.walk does not follow links: take a linked adapter folder itself
                    dirs.remove(d)
                    if (
                        (link / CONFIG_FILE).is_file()
                        and inside_root(root, link)
                        and inside_root(root, link / CONFIG_FILE)
                    ):
                        found.setdefault(link.relative_to(root).as_posix(), Entry(link, _examples_version(link)))
    return found


class AdapterIndex:
    def __init__(
        self, roots: Sequence[Path | str], managed_root: Path | str | None = None, scan_interval_s: float | None = 10.0
    ):
        self.roots = [Path(r).resolve() for r in roots]
        self.managed_root = Path(managed_root).resolve() if managed_root is not None else None
        self.scan_interval_s = scan_interval_s
        self._lock = threading.Lock()
        self._scanned: dict[str, Entry] = {}
        self._journal: dict[str, Entry] = {}
        self._stamp: object = ()
        self._names: list[str] = []
        self.version = 0  # bumped whenever the set of names (or an examples file) changes
        self.last_scan_s = 0.0
        self.refresh()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if scan_interval_s:
            self._thread = threading.Thread(target=self._poll, name="loraplex-adapter-index", daemon=True)
            self._thread.start()

    # ---- lookups (one stat of the journal each) -------------------------------------------------
    def names(self) -> list[str]:
        """All adapter names, sorted; the same list object until something changes."""
        self._sync()
        return self._names

    def __contains__(self, name: object) -> bool:
        self._sync()
        return name in self._scanned or name in self._journal

    def __len__(self) -> int:
        return len(self.names())

    def entry(self, name: str) -> Entry | None:
        self._sync()
        return self._journal.get(name) or self._scanned.get(name)

    def example_versions(self) -> dict[str, FileVersion]:
        """`{adapter: version of its routing_examples.jsonl}` for the adapters that have one."""
        self._sync()
        with self._lock:
            both = {**self._scanned, **self._journal}
        return {n: e.examples for n, e in both.items() if e.examples is not None}

    # ---- updates ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Scan every root now (the background thread calls this every `scan_interval_s`)."""
        t0 = time.perf_counter()
        skip = self.managed_root is not None and read_journal(self.managed_root) is not None
        scanned = scan_roots(self.roots, skip_registered=skip)
        with self._lock:
            if scanned != self._scanned:
                self._scanned = scanned
                self._changed()
        self.last_scan_s = time.perf_counter() - t0
        self._sync(force=True)

    def sync(self) -> None:
        """Re-read the journal now (after this process registered or removed an adapter)."""
        self._sync(force=True)

    def close(self) -> None:
        self._stop.set()

    def _sync(self, force: bool = False) -> None:
        if self.managed_root is None:
            return
        stamp = journal_stamp(self.managed_root)
        if stamp == self._stamp and not force:
            return
        names = read_journal(self.managed_root) or []
        with self._lock:
            old = self._journal
            journal = {}
            for n in names:
                folder = self.managed_root / n
                prev = old.get(n)
                journal[n] = prev if prev is not None and not force else Entry(folder, _examples_version(folder))
            if journal != old:
                self._journal = journal
                self._changed()
            self._stamp = stamp

    def _changed(self) -> None:  # under the lock
        self._names = sorted(set(self._scanned) | set(self._journal))
        self.version += 1

    def _poll(self) -> None:
        while not self._stop.wait(self.scan_interval_s):
            try:
                self.refresh()
            except Exception:  # a root gone for a moment (remount): keep the last listing, try again later
                log.exception("adapter index scan failed; keeping the previous listing")
