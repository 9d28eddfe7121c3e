"""Labelled routing data from a user's JSONL file: prompt -> which adapter should answer it.

One JSON object per line:

    {"prompt": "Reset my password please", "adapter": "support/intent"}
    {"prompt": "hi there", "adapter": null}                          # no adapter: the base model answers
    {"prompt": "refund and angry", "weights": {"intent": 0.5, "sentiment": 0.5}}   # a soft label

An optional `"answer"` (the output the labelled adapter should give) is ignored by training and used by
`scripts/eval_routing.py --data` to score the served answers of routed and oracle adapters.

`"adapter": null` becomes the reserved class `base` (the base model alone, as `model: "base"` in the
API). Every problem in the file is collected and reported at once, with its line number: an adapter
that is not in the given adapter roots (with the valid names), a class with too few distinct
prompts, duplicate-only data, malformed lines. A router trained on names that cannot be served
would fail only at request time.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from loraplex.experts.errors import DatasetError
from loraplex.router.policy import BASE

MIN_DISTINCT = 2  # distinct prompts a class needs (one for training, one to check it on)


@dataclass
class RoutingData:
    texts: list[str]
    targets: torch.Tensor  # [n, experts], rows sum to 1
    experts: list[str]  # class names: adapters, and `base` when the data has "adapter": null
    duplicates: int = 0  # exact (prompt, label) repeats dropped while reading

    @property
    def labels(self) -> list[int]:
        """The argmax class of each row, -1 where the target is soft (no single class above 0.5)."""
        vals, idx = self.targets.max(dim=1)
        return [int(i) if v > 0.5 else -1 for v, i in zip(vals, idx)]

    def write_jsonl(self, path: Path) -> None:
        """The same data as a JSONL file `load_jsonl` reads back (how the demo hands its data to training)."""
        with Path(path).open("w") as f:
            for text, row in zip(self.texts, self.targets.tolist()):
                nz = {e: round(w, 6) for e, w in zip(self.experts, row) if w > 0}
                if len(nz) == 1 and next(iter(nz.values())) == 1.0:
                    name = next(iter(nz))
                    f.write(json.dumps({"prompt": text, "adapter": None if name == BASE else name}) + "\n")
                else:
                    f.write(json.dumps({"prompt": text, "weights": nz}) + "\n")


def _target(obj: dict, where: str, problems: list[str]) -> dict[str, float] | None:
    has_adapter, has_weights = "adapter" in obj, "weights" in obj
    if has_adapter == has_weights:
        problems.append(f"{where}: give exactly one of 'adapter' (a name or null) and 'weights' (adapter -> weight)")
        return None
    if has_adapter:
        name = obj["adapter"]
        if name is None:
            return {BASE: 1.0}
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: 'adapter' must be an adapter name or null, got {name!r}")
            return None
        return {name: 1.0}
    weights = obj["weights"]
    ok = (
        isinstance(weights, dict)
        and weights
        and all(
            isinstance(k, str)
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and v >= 0
            for k, v in weights.items()
        )
    )
    if not ok or sum(weights.values()) <= 0:
        problems.append(
            f"{where}: 'weights' must map adapter names to finite numbers >= 0, not all zero; got {weights!r}"
        )
        return None
    total = float(sum(weights.values()))
    return {k: float(v) / total for k, v in weights.items() if v > 0}


def parse_lines(lines: Iterable[str], available: Iterable[str] | None, source: str = "data") -> RoutingData:
    """Parse JSONL lines; `available`: the adapter names the roots hold (None: do not check names)."""
    problems: list[str] = []
    rows: list[tuple[str, dict[str, float]]] = []
    seen: set[tuple[str, tuple]] = set()
    duplicates = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            problems.append(f"{where}: not valid JSON ({e})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
            continue
        extra = sorted(set(obj) - {"prompt", "adapter", "weights", "answer"})
        if extra:
            problems.append(f"{where}: unknown field(s) {extra}; valid: ['adapter', 'answer', 'prompt', 'weights']")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{where}: 'prompt' must be a non-empty string")
            continue
        target = _target(obj, where, problems)
        if target is None:
            continue
        key = (prompt, tuple(sorted(target.items())))
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        rows.append((prompt, target))
    names = sorted({name for _, t in rows for name in t})
    if available is not None:
        valid = sorted(set(available))
        unknown = [name for name in names if name != BASE and name not in valid]
        if unknown:
            problems.append(f"adapter(s) {unknown} are not in the adapter roots; available adapters: {valid}")
    hard = Counter(next(iter(t)) for _, t in rows if len(t) == 1)
    for name in names:
        if hard[name] < MIN_DISTINCT:
            problems.append(
                f"class {name!r} has {hard[name]} distinct prompt(s) labelled with it alone; "
                f"each class needs at least {MIN_DISTINCT}"
            )
    if rows and len(names) < 2:
        problems.append(f"the data names only {names}; a router needs at least 2 classes")
    if not rows and not problems:
        problems.append(f"{source} holds no examples")
    if duplicates and len(rows) < 2 * MIN_DISTINCT:
        problems.append(f"{source} is almost only duplicates: {duplicates} repeated lines, {len(rows)} distinct")
    if problems:
        raise DatasetError(source, problems)
    index = {name: i for i, name in enumerate(names)}
    targets = torch.zeros(len(rows), len(names))
    for r, (_, t) in enumerate(rows):
        for name, w in t.items():
            targets[r, index[name]] = w
    return RoutingData([p for p, _ in rows], targets, names, duplicates)


def load_jsonl(path: Path | str, available: Iterable[str] | None) -> RoutingData:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(str(path), [f"no such file: {str(path)!r}"])
    return parse_lines(path.read_text(encoding="utf-8").splitlines(), available, source=path.name)


def stratified_split(data: RoutingData, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows): `val_fraction` of every class held out, at least one per class; soft rows
    are split the same way as a group of their own."""
    rng = random.Random(seed)
    groups: dict[int, list[int]] = {}
    for r, label in enumerate(data.labels):
        groups.setdefault(label, []).append(r)
    train, val = [], []
    for label in sorted(groups):
        rows = groups[label]
        rng.shuffle(rows)
        k = max(1, round(len(rows) * val_fraction)) if len(rows) >= 2 else 0
        val += rows[:k]
        train += rows[k:]
    return sorted(train), sorted(val)
