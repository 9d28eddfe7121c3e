"""The hand-written free-phrasing set (`free_phrasing.jsonl`): requests as a newcomer types them.

120 requests, 40 per demo task, written by hand on 2026-12-01 in styles the generator's templates
never use (no `Message:` label, no `Answer:` cue, arrows, quotes, typos, casing, chit-chat, the
question before, after or around the text). It is an evaluation set only: never used for training
or for choosing hyper-parameters (issue 13). Scored through a running server
(`scripts/eval_free_phrasing.py`): exact answers (entities: both fields right) and routing top-1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SET_PATH = Path(__file__).resolve().parent / "free_phrasing.jsonl"  # shipped as package data


@dataclass(frozen=True)
class FreeRequest:
    id: str
    task: str
    style: str
    prompt: str
    answer: str


def load_set(path: Path = SET_PATH) -> list[FreeRequest]:
    return [FreeRequest(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def is_correct(task: str, output: str, answer: str) -> bool:
    """Exact answer after trimming; entities: the JSON object must parse and both fields match."""
    text = output.strip()
    if task != "entities":
        return text == answer
    try:
        got = json.loads(text)
    except ValueError:
        return False
    want = json.loads(answer)
    return isinstance(got, dict) and all(got.get(k) == want[k] for k in ("order_id", "email"))


def top_adapter(routing: dict) -> str | None:
    weights = routing.get("weights") or {}
    return max(weights, key=weights.get) if weights else None
