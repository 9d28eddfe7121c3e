"""The demo's mixed task for `scripts/fit_composition.py`: intent and sentiment requests in one stream.

Each adapter answers its own task; neither answers the other's. A client that sends both kinds of request
to one model name needs a blend, and the question the fitter answers is which weights serve the mix best
(and whether any blend beats the better single adapter; docs/compositions.md reports what it found).
"""

from __future__ import annotations

import json
from pathlib import Path

from loraplex.demo.data import make_examples

EOS = "</s>"


def mixed_rows(
    n: int, seed: int = 0, split: str = "train", tasks: tuple[str, ...] = ("intent", "sentiment")
) -> list[dict]:
    """`n` `{"prompt", "completion"}` rows, the tasks interleaved (completion `" <answer></s>"`, as trained)."""
    per = [make_examples(t, (n + len(tasks) - 1) // len(tasks), seed, split) for t in tasks]
    rows = [{"prompt": e.prompt, "completion": f" {e.answer}{EOS}"} for group in zip(*per) for e in group]
    return rows[:n]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
