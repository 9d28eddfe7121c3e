"""Where an adapter's files come from, beyond the local roots: the Hugging Face Hub, through its cache.

A source turns a reference into a local folder; the loader then validates that folder exactly like a
local adapter (same shapes, ranks, flags, safetensors only). One class per scheme: `hf://` here; an
S3-style source would implement the same three methods (`matches`, `check`, `fetch`) for `s3://`.

Hub references: `hf://org/name@revision`, `hf://org/name` (the configured default revision), or a plain
`org/name` that no local root holds. Only repos matching `HubConfig.repos` are ever fetched, and only the
adapter's own files (config, safetensors weights, routing examples). The size bound is checked from the
Hub's file metadata *before* any download, and again on the cached files (a cache filled by hand, or
offline). Cached files must resolve inside the repo's cache folder (the snapshot's symlinks point into its
`blobs/`), the same confinement local adapters get.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from loraplex.config.engine import HubConfig
from loraplex.experts.adapters import routing_examples
from loraplex.experts.adapters.loader import CONFIG_FILE, SAFETENSORS_FILE
from loraplex.experts.errors import AdapterNameError, HubAdapterError, PayloadTooLargeError, UnavailableError

HUB_SCHEME = "hf://"
HUB_FILES = (CONFIG_FILE, SAFETENSORS_FILE, routing_examples.FILE)
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


def is_hub_ref(name: str) -> bool:
    return isinstance(name, str) and name.startswith(HUB_SCHEME)


def check_hub_ref(hub: HubSource | None, name: str) -> None:
    """Raise unless `hub` would fetch the `hf://` reference `name` (a clear error when hub sources are off)."""
    if hub is None:
        raise AdapterNameError(
            f"{name!r} is a Hugging Face Hub reference but hub sources are off; allow repos with hub.repos in the "
            "app config"
        )
    hub.check(name)


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str


def parse_hub_ref(name: str, default_revision: str) -> HubRef:
    """`hf://org/name[@rev]` or `org/name`; raises `AdapterNameError` for anything else."""
    body = name[len(HUB_SCHEME) :] if is_hub_ref(name) else name
    repo, _, revision = body.partition("@")
    revision = revision or default_revision
    if not _REPO.match(repo) or ".." in repo or not _REVISION.match(revision) or ".." in revision:
        raise AdapterNameError(
            f"invalid hub adapter reference {name!r}: use hf://org/name or hf://org/name@revision "
            "(letters, digits, '.', '_', '-')"
        )
    return HubRef(repo, revision)


class AdapterSource(Protocol):
    def matches(self, name: str) -> bool: ...

    def check(self, name: str) -> object: ...

    def fetch(self, name: str) -> Path: ...


class HubMetadata(Protocol):
    """The part of `huggingface_hub.HfApi` the size check needs (a fake in unit tests)."""

    def model_info(self, repo_id: str, *, revision: str | None = None, files_metadata: bool = False): ...


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


class HubSource:
    def __init__(self, config: HubConfig, api: HubMetadata | None = None):
        self.config = config
        self.max_bytes = int(config.max_adapter_mb * 2**20)
        self._api = api

    def matches(self, name: str) -> bool:
        """Whether `name` is a reference this source would fetch (syntax and allowed repos)."""
        try:
            self.check(name)
            return True
        except AdapterNameError:
            return False

    def check(self, name: str) -> HubRef:
        ref = parse_hub_ref(name, self.config.revision)
        if not any(fnmatch.fnmatchcase(ref.repo, p) for p in self.config.repos):
            raise AdapterNameError(f"hub repo {ref.repo!r} is not allowed; hub.repos allows {self.config.repos}")
        return ref

    def fetch(self, name: str) -> Path:
        """The adapter's snapshot folder in the Hub cache, downloading it first if needed (loader thread)."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        ref = self.check(name)
        kw = {"revision": ref.revision, "cache_dir": self.config.cache_dir, "allow_patterns": list(HUB_FILES)}
        try:
            path = Path(snapshot_download(ref.repo, local_files_only=True, **kw))
        except LocalEntryNotFoundError:
            if _offline():
                raise HubAdapterError(
                    f"hub adapter {name!r} ({ref.repo}@{ref.revision}) is not in the local Hugging Face cache and "
                    "HF_HUB_OFFLINE is set; download it into the cache first (huggingface-cli download)"
                ) from None
            try:
                self._check_remote_size(name, ref)
                path = Path(snapshot_download(ref.repo, **kw))
            except (RepositoryNotFoundError, RevisionNotFoundError) as e:
                raise HubAdapterError(f"hub adapter {name!r}: {type(e).__name__}: {e}") from None
            except OSError as e:  # connection refused, DNS, timeouts (requests' errors are OSErrors)
                raise UnavailableError(f"hub adapter {name!r}: the Hub is unreachable ({e})") from None
        self._check_local(name, ref, path)
        return path

    def _check_remote_size(self, name: str, ref: HubRef) -> None:
        api = self._api
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        info = api.model_info(ref.repo, revision=ref.revision, files_metadata=True)
        size = sum((s.size or 0) for s in info.siblings or () if s.rfilename in HUB_FILES)
        self._bound(name, size)

    def _check_local(self, name: str, ref: HubRef, path: Path) -> None:
        repo_dir = path.parents[1].resolve()  # <cache>/models--org--name (snapshots/<sha> below it)
        size = 0
        for f in HUB_FILES:
            p = path / f
            if not p.exists():
                continue
            if not p.resolve().is_relative_to(repo_dir):
                raise AdapterNameError(f"hub adapter {name!r}: {f} resolves outside its cache folder; refusing it")
            size += p.stat().st_size
        self._bound(name, size)

    def _bound(self, name: str, size: int) -> None:
        if size > self.max_bytes:
            raise PayloadTooLargeError(
                f"hub adapter {name!r} is {size} bytes; the bound is hub.max_adapter_mb={self.config.max_adapter_mb} "
                f"({self.max_bytes} bytes)"
            )
