"""Does bf16 serve the demo as well as float32? Held-out accuracy per task and greedy agreement, same engine.

bf16 matmuls run ~3x faster than float32 on CPUs with AVX512-BF16 (and on every GPU), but bf16 keeps 8
bits of mantissa, so greedy decoding can take another branch where two tokens are close. The check runs
each task's held-out examples through its own adapter on the native engine once per dtype and reports
exact-match accuracy (the number users care about) and how often the dtypes agree token for token.
"""

from __future__ import annotations

import time
from pathlib import Path

from loraplex.config.engine import EngineConfig
from loraplex.demo.data import TASKS
from loraplex.demo.evaluation import heldout_examples, is_match
from loraplex.experts.engine import Engine, Request


def compare_dtypes(
    models_dir: Path, n: int, seed: int = 0, dtypes: tuple[str, ...] = ("float32", "bfloat16"), max_tokens: int = 48
) -> dict:
    """Per dtype: accuracy per task, seconds; and, against the first dtype, the share of identical answers."""
    examples = heldout_examples(n, seed)
    out: dict = {"n": n, "seed": seed, "tasks": list(TASKS), "dtypes": {}}
    tokens: dict[str, dict[str, list[list[int]]]] = {}
    for dtype in dtypes:
        engine = Engine.from_config(
            EngineConfig(
                base_model=str(models_dir / "base"),
                adapter_roots=[str(models_dir / "adapters")],
                device="cpu",
                dtype=dtype,
                max_batch_rows=64,
            )
        )
        acc, seconds, tokens[dtype] = {}, 0.0, {}
        for task in TASKS:
            reqs = [Request.from_json(e.prompt, task, max_tokens=max_tokens, temperature=0) for e in examples[task]]
            t0 = time.perf_counter()
            res = engine.generate(reqs)
            seconds += time.perf_counter() - t0
            acc[task] = round(sum(is_match(task, r.text, e.answer) for r, e in zip(res, examples[task])) / n, 4)
            tokens[dtype][task] = [r.token_ids for r in res]
        out["dtypes"][dtype] = {"accuracy": acc, "seconds": round(seconds, 2)}
    ref = dtypes[0]
    for dtype in dtypes[1:]:
        same, tok_same, tok_all = {}, 0, 0
        for task in TASKS:
            pairs = list(zip(tokens[ref][task], tokens[dtype][task]))
            same[task] = round(sum(a == b for a, b in pairs) / n, 4)
            for a, b in pairs:
                k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                tok_same += k  # tokens before the first divergence
                tok_all += max(len(a), 1)
        out["dtypes"][dtype]["identical_answers_vs_" + ref] = same
        out["dtypes"][dtype]["tokens_before_divergence_vs_" + ref] = round(tok_same / tok_all, 4)
        out["dtypes"][dtype]["accuracy_delta_vs_" + ref] = {
            t: round(out["dtypes"][dtype]["accuracy"][t] - out["dtypes"][ref]["accuracy"][t], 4) for t in TASKS
        }
    return out
