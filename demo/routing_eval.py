"""Routing evaluation on the held-out demo split: does MoE routing recover the task-label oracle?

Every system runs through the real engine (one mixed batch per system), scored by exact match:
base alone, each adapter on each task (transfer matrix), task-label oracle, per-example oracle,
MoE top-1, MoE top-2 soft, the confidence-gated policy, and a uniform delta blend of all adapters.
:func:`render_markdown` and :func:`plot_confusion` turn the report into docs/routing.md's table and
confusion plot, so ``scripts/eval_routing.py`` stays a command line.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from loraplex.demo.data import TASKS, Example
from loraplex.demo.evaluation import is_match
from loraplex.experts.engine import Engine, Request
from loraplex.router.policy import PolicyConfig, decide
from loraplex.router.router import Router


def expected_calibration_error(conf: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> float:
    """Standard ECE: sum over confidence bins of |accuracy - mean confidence| weighted by bin size."""
    ece = 0.0
    edges = torch.linspace(0, 1, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += float(m.float().mean()) * abs(float(correct[m].float().mean()) - float(conf[m].mean()))
    return ece


def _run(engine: Engine, prompts: list[str], comps: list, max_tokens: int) -> list[str]:
    return [
        r.text
        for r in engine.generate([Request.from_json(p, c, max_tokens=max_tokens) for p, c in zip(prompts, comps)])
    ]


def latency_ms(router: Router, texts: Sequence[str], batch: int, repeats: int) -> dict:
    """Per-request routing latency (featurize + network + policy) at a given batch size."""
    per_request = []
    router.route(list(texts[:batch]))  # warm-up
    for i in range(repeats):
        chunk = [texts[(i * batch + j) % len(texts)] for j in range(batch)]
        t0 = time.perf_counter()
        router.route(chunk)
        per_request.append((time.perf_counter() - t0) * 1000 / batch)
    per_request.sort()
    return {
        "p50": round(statistics.median(per_request), 3),
        "p99": round(per_request[min(len(per_request) - 1, int(0.99 * len(per_request)))], 3),
        "batch": batch,
    }


def evaluate_routing(
    engine: Engine, router: Router, examples: dict[str, list[Example]], max_tokens: int = 40, latency_repeats: int = 200
) -> dict:
    tasks = [t for t in TASKS if t in examples]
    adapters = router.experts
    flat = [(t, e) for t in tasks for e in examples[t]]
    prompts = [e.prompt for _, e in flat]

    def from_ok(ok: list[bool]) -> dict:
        per = {t: sum(o for (tt, _), o in zip(flat, ok) if tt == t) / len(examples[t]) for t in tasks}
        return {"per_task": per, "mean": sum(per.values()) / len(per), "ok": ok}

    def score(preds: list[str]) -> dict:
        return from_ok([is_match(t, p, e.answer) for (t, e), p in zip(flat, preds)])

    systems: dict[str, dict] = {"base": score(_run(engine, prompts, [None] * len(flat), max_tokens))}
    for a in adapters:
        systems[f"adapter:{a}"] = score(_run(engine, prompts, [a] * len(flat), max_tokens))
    task_oracle_ok = [systems[f"adapter:{t}"]["ok"][i] for i, (t, _) in enumerate(flat)]
    any_ok = [any(systems[f"adapter:{a}"]["ok"][i] for a in adapters) for i in range(len(flat))]
    systems["oracle:task_label"] = from_ok(task_oracle_ok)
    systems["oracle:per_example"] = from_ok(any_ok)
    logits = torch.cat([router.logits(prompts[i : i + 64]) for i in range(0, len(prompts), 64)])
    policies = {
        "moe:top1": PolicyConfig(top_k=1, confidence_floor=0.0),
        "moe:top2_soft": PolicyConfig(top_k=2, confidence_floor=0.0),
        "moe:policy": router.policy,
    }
    for name, pol in policies.items():
        comps = [d.composition() for d in decide(logits, adapters, pol)]
        systems[name] = score(_run(engine, prompts, comps, max_tokens))
    uniform = {"mode": "blend", "weights": {a: 1.0 / len(adapters) for a in adapters}}
    systems["blend:uniform_delta"] = score(_run(engine, prompts, [uniform] * len(flat), max_tokens))

    base, oracle = systems["base"]["mean"], systems["oracle:task_label"]["mean"]
    table = {}
    for name, s in systems.items():
        gap = (s["mean"] - base) / (oracle - base) if oracle > base else float("nan")
        table[name] = {
            **{t: round(v, 4) for t, v in s["per_task"].items()},
            "mean": round(s["mean"], 4),
            "gap_recovered": round(gap, 4),
        }

    probs = logits.softmax(-1)
    gold = torch.tensor([adapters.index(t) for t, _ in flat])
    pred = probs.argmax(-1)
    confusion = torch.zeros(len(adapters), len(adapters), dtype=torch.long)
    for g, p in zip(gold.tolist(), pred.tolist()):
        confusion[g, p] += 1
    conf = probs.max(-1).values
    return {
        "table": table,
        "router": {
            "accuracy": round(float((pred == gold).float().mean()), 4),
            "confusion": {"labels": adapters, "matrix": confusion.tolist()},
            "ece": round(expected_calibration_error(conf, pred == gold), 4),
            "mean_confidence": round(float(conf.mean()), 4),
            "latency_ms": {
                "batch_1": latency_ms(router, prompts, 1, latency_repeats),
                "batch_32": latency_ms(router, prompts, 32, max(10, latency_repeats // 10)),
            },
        },
        "n_per_task": {t: len(examples[t]) for t in tasks},
    }


def reference_example(router: Router, text: str = "I need to reset my password. This is frustrating!") -> dict:
    """The reference article's routing example (a bare message, no instruction)."""
    d = router.route([text])[0]
    return {
        "text": text,
        "mode": d.mode,
        "weights": d.weights,
        "confidence": round(d.confidence, 4),
        "probs": d.probs,
        "fallback": d.fallback,
    }


def render_markdown(report: dict) -> str:
    """The systems table, the router line (accuracy, ECE, latency) and the reference example, as Markdown."""
    table = report["table"]
    tasks = [k for k in next(iter(table.values())) if k not in ("mean", "gap_recovered")]
    lines = ["| system | " + " | ".join(tasks) + " | mean | gap recovered |", "|---|" + "---:|" * (len(tasks) + 2)]
    for name, row in table.items():
        cells = " | ".join(f"{100 * row[t]:.1f}%" for t in tasks)
        lines.append(f"| {name} | {cells} | {100 * row['mean']:.1f}% | {row['gap_recovered']:.3f} |")
    r = report["router"]
    lat = r["latency_ms"]
    lines += [
        "",
        f"Router accuracy {100 * r['accuracy']:.2f}%, ECE {r['ece']:.4f}, mean confidence {r['mean_confidence']:.3f}; "
        f"latency per request p50/p99: batch 1 {lat['batch_1']['p50']:.2f}/{lat['batch_1']['p99']:.2f} ms, "
        f"batch 32 {lat['batch_32']['p50']:.2f}/{lat['batch_32']['p99']:.2f} ms.",
    ]
    ref = report["reference_example"]
    lines += [
        "",
        f"Reference example {ref['text']!r}: confidence {ref['confidence']:.3f}, fallback={ref['fallback']}, "
        f"probs {ref['probs']}, weights {ref['weights']}.",
    ]
    return "\n".join(lines) + "\n"


def plot_confusion(report: dict, path: Path) -> None:
    """The router's confusion matrix (task x routed-to) as a PNG; matplotlib is a dev dependency, imported here only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = report["router"]["confusion"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(c["matrix"], cmap="Blues")
    ax.set_xticks(range(len(c["labels"])), c["labels"])
    ax.set_yticks(range(len(c["labels"])), c["labels"])
    for i, row in enumerate(c["matrix"]):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xlabel("routed to")
    ax.set_ylabel("task")
    ax.set_title(f"router confusion (acc {100 * report['router']['accuracy']:.1f}%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
