"""`routing_examples.jsonl` in an adapter folder: example prompts that make the adapter routable by `auto`.

One JSON object per line, `{"prompt": "..."}` (a bare JSON string per line is accepted too). The file
lives beside `adapter_config.json`, so it travels with the adapter: shipped in a PEFT folder, written
by `POST /v1/adapters` from its `routing_examples`, read by every ingress replica from the shared
adapter roots (so routing survives restarts), and deleted with the adapter. Only prompts are stored,
never answers; the ingress embeds them with the router's featurizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from loraplex.experts.errors import RequestError, bullet_list

FILE = "routing_examples.jsonl"
MAX_EXAMPLES = 256  # per adapter: a prototype needs a handful; thousands belong in a retrain (train_router --data)
MAX_CHARS = 4000  # per example prompt


def check_examples(prompts: object, where: str = "routing_examples") -> list[str]:
    """The prompts, stripped of exact repeats; every problem at once as one `RequestError` (HTTP 400)."""
    if not isinstance(prompts, list):
        raise RequestError(f"{where} must be a list of prompt strings, got {type(prompts).__name__}")
    problems = []
    if len(prompts) > MAX_EXAMPLES:
        problems.append(f"{where} has {len(prompts)} prompts; the limit is {MAX_EXAMPLES}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            problems.append(f"{where}[{i}]: must be a non-empty string, got {p!r}"[:200])
        elif len(p) > MAX_CHARS:
            problems.append(f"{where}[{i}]: {len(p)} characters; the limit is {MAX_CHARS}")
    if problems:
        raise RequestError(f"invalid {where}:{bullet_list(problems)}")
    return list(dict.fromkeys(prompts))


def read_examples(folder: Path) -> list[str]:
    """The folder's example prompts ([] without the file); a malformed file raises naming its bad lines."""
    path = Path(folder) / FILE
    if not path.is_file():
        return []
    prompts, problems = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            problems.append(f"line {n}: not JSON ({e.msg})")
            continue
        prompt = obj.get("prompt") if isinstance(obj, dict) else obj
        if not isinstance(prompt, str):
            problems.append(f'line {n}: expected {{"prompt": "..."}} or a JSON string')
            continue
        prompts.append(prompt)
    if problems:
        raise RequestError(f"invalid {path}:{bullet_list(problems)}")
    return check_examples(prompts, str(path))


def write_examples(folder: Path, prompts: Sequence[str]) -> None:
    with (Path(folder) / FILE).open("w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")
