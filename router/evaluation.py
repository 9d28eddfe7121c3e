"""Score a router on a user's held-out JSONL: what `scripts/eval_routing.py --data` prints and saves.

Accuracy, per-adapter precision/recall, confusion and calibration come from `router.report` on the
probabilities the router actually serves (with a prototype head, over trained and prototype classes);
on top: how often the confidence fallback fired, which head decided, batch-1 latency (the ingress
routes one request at a time), and, when the data carries answers and a `generate` function is given,
the served answers' exact match for the routed adapter against the labelled one (the task-label oracle).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from loraplex.router.dataset import RoutingData
from loraplex.router.policy import BASE, Decision
from loraplex.router.prototypes import PrototypeHead
from loraplex.router.report import routing_report
from loraplex.router.router import Router

BATCH = 32
WARMUP = 5

Generate = Callable[[Sequence[str], Sequence[object]], list[str]]  # (prompts, compositions) -> answers


def route_all(router: Router, texts: Sequence[str], head: PrototypeHead | None = None) -> list[Decision]:
    out: list[Decision] = []
    for i in range(0, len(texts), BATCH):
        out += router.route(list(texts[i : i + BATCH]), head=head)
    return out


def batch1_latency_ms(router: Router, texts: Sequence[str], head: PrototypeHead | None, n: int) -> dict:
    sample = list(texts[: n + WARMUP])
    times = []
    for i, text in enumerate(sample):
        t0 = time.perf_counter()
        router.route([text], head=head)
        if i >= WARMUP:
            times.append((time.perf_counter() - t0) * 1000)
    if not times:
        return {"n": 0}
    times.sort()
    return {
        "n": len(times),
        "p50": round(statistics.median(times), 2),
        "p95": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2),
    }


def served(decision: Decision) -> str:
    """The adapter a decision serves most (its top weight), `base` for the base model."""
    return max(decision.weights, key=decision.weights.get) if decision.weights else BASE


def evaluate(
    router: Router,
    data: RoutingData,
    head: PrototypeHead | None = None,
    latency_n: int = 100,
    answers: Sequence[str | None] | None = None,
    generate: Generate | None = None,
) -> dict:
    decisions = route_all(router, data.texts, head)
    classes = list(head.trained + head.prototypes) if head is not None else list(router.experts)
    columns = classes + [e for e in data.experts if e not in classes]  # a label the router cannot give scores 0
    probs = torch.tensor([[d.probs.get(c, 0.0) for c in columns] for d in decisions])  # [n, columns]
    targets = torch.zeros(len(data.texts), len(columns))  # [n, columns]
    for j, name in enumerate(data.experts):
        targets[:, columns.index(name)] = data.targets[:, j]
    report = routing_report(probs.clamp_min(1e-12).log(), targets, columns)
    labels = data.labels
    hard = [i for i, label in enumerate(labels) if label >= 0]
    served_right = sum(served(decisions[i]) == data.experts[labels[i]] for i in hard)
    report.update(
        served_top1_accuracy=round(served_right / len(hard), 4) if hard else None,
        fallback_rate=round(sum(d.fallback for d in decisions) / max(1, len(decisions)), 4),
        head_share={h: round(c / len(decisions), 4) for h, c in Counter(d.head for d in decisions).items()},
        latency_ms_batch1=batch1_latency_ms(router, data.texts, head, latency_n),
        per_adapter_accuracy={
            name: round(sum(served(decisions[i]) == name for i in hard if labels[i] == k) / n, 4)
            for k, name in enumerate(data.experts)
            if (n := sum(1 for i in hard if labels[i] == k))
        },
    )
    if answers is not None and generate is not None:
        report["answers"] = answer_quality(data, decisions, answers, generate)
    return report


def answer_quality(
    data: RoutingData, decisions: Sequence[Decision], answers: Sequence[str | None], generate: Generate
) -> dict:
    """Exact match of the served answers: routed composition vs the labelled adapter (the oracle)."""
    labels = data.labels
    rows = [i for i, (a, label) in enumerate(zip(answers, labels)) if a is not None and label >= 0]
    if not rows:
        return {"n": 0}
    prompts = [data.texts[i] for i in rows]
    oracle = [None if data.experts[labels[i]] == BASE else data.experts[labels[i]] for i in rows]
    routed = [decisions[i].composition() for i in rows]

    def exact(outs: list[str]) -> float:
        return round(sum(o.strip() == answers[i].strip() for o, i in zip(outs, rows)) / len(rows), 4)

    return {
        "n": len(rows),
        "oracle_exact_match": exact(generate(prompts, oracle)),
        "routed_exact_match": exact(generate(prompts, routed)),
    }
