"""Joint versus separate training on the built demo: train both, score both through the real engine.

The question (docs/joint_training.md): does training the router and the LoRA experts *together*
(:mod:`loraplex.demo.joint_training`) beat the demo's separate pipeline, i.e. per-task adapters from
:mod:`loraplex.demo.build` plus a router trained afterwards on frozen features? For a fair answer
both sides see the same things: the joint run takes its LoRA shape, data, per-task mix and step
budget from the built demo's manifest, and the separate router uses the same featurizer kind as the
joint one (the base model's mean-pooled hidden state). Both are scored by exact match on the
held-out split through one real ``Engine`` per adapter root: MoE top-1, MoE top-2 soft, and the
task-label oracle.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraplex.config.engine import EngineConfig
from loraplex.demo.build import ADAPTER_TASKS, adapter_dir, base_dir
from loraplex.demo.data import Example
from loraplex.demo.evaluation import heldout_examples, is_match
from loraplex.demo.joint_training import JointConfig, joint_lora_lr, save_joint, train_joint
from loraplex.demo.router_training import fit_router
from loraplex.demo.routing_data import routing_data
from loraplex.experts.engine import Engine, Request
from loraplex.router.featurizers import HiddenStateFeaturizer
from loraplex.router.fitting import featurize
from loraplex.router.policy import PolicyConfig, decide
from loraplex.router.router import Router
from loraplex.router.training import TrainConfig

SYSTEMS = (
    ("moe_top1", "router top-1"),
    ("moe_top2_soft", "router top-2 soft"),
    ("oracle_task_label", "task-label oracle"),
)


def joint_config_from_manifest(
    manifest: dict,
    steps: int | None = None,
    batch: int | None = None,
    lora_lr: float | None = None,
    experts: Sequence[str] = ADAPTER_TASKS,
    **knobs,
) -> JointConfig:
    """A :class:`JointConfig` matching the demo that was actually built (its ``manifest.json``), not the
    current ``DemoConfig`` defaults: LoRA rank/alpha, warmup, training data and per-task mix, and by
    default the same step budget (the adapters' steps summed) and batch. ``knobs`` sets the rest
    (``top_k``, ``router_lr``, ``balance_coef``, ``z_coef``, ``router_ce_coef``, ``init``, ``seed``, ...)."""
    dc = manifest["config"]
    return JointConfig(
        steps=steps or sum(dc["lora_steps"][t] for t in experts),
        batch=batch or dc["lora_batch"],
        lora_lr=lora_lr or joint_lora_lr(dc["lora_lr"]),
        warmup=dc["lora_warmup"],
        experts=tuple(experts),
        task_mix={t: dc["lora_steps"][t] for t in experts},
        train_examples={t: dc["train_examples"][t] for t in experts},
        lora_r=dc["lora_r"],
        lora_alpha=dc["lora_alpha"],
        **knobs,
    )


def best_permutation_accuracy(confusion: list[list[int]]) -> float:
    """Routing accuracy up to a relabelling of the experts (does the router separate the tasks at all?).

    A jointly trained router has no reason to send intent prompts to the expert *named* intent: the
    experts specialise however helps the loss, so plain accuracy can be low while routing is perfect.
    """
    n = len(confusion)
    total = sum(map(sum, confusion))
    best = max(sum(confusion[t][perm[t]] for t in range(n)) for perm in itertools.permutations(range(n)))
    return best / total if total else float("nan")


def router_metrics(logits: torch.Tensor, gold: torch.Tensor, experts: list[str]) -> dict:
    """Accuracy (plain and up to relabelling), mean confidence, per-expert share and the confusion matrix."""
    probs = logits.softmax(-1)
    pred = probs.argmax(-1)
    confusion = [[0] * len(experts) for _ in experts]
    for g, p in zip(gold.tolist(), pred.tolist()):
        confusion[g][p] += 1
    return {
        "accuracy": round(float((pred == gold).float().mean()), 4),
        "accuracy_best_permutation": round(best_permutation_accuracy(confusion), 4),
        "mean_confidence": round(float(probs.max(-1).values.mean()), 4),
        "share": [round(float(s), 3) for s in torch.bincount(pred, minlength=len(experts)).float() / len(pred)],
        "confusion": {"rows": "task", "cols": "routed to", "labels": experts, "matrix": confusion},
    }


def evaluate_pipeline(
    engine, logits: torch.Tensor, examples: dict[str, list[Example]], experts: list[str], max_tokens: int
) -> dict:
    """Exact match per task for moe top-1, moe top-2 soft and the task-label oracle through the engine."""
    flat = [(t, e) for t in experts for e in examples[t]]
    prompts = [e.prompt for _, e in flat]

    def run(comps: list) -> dict:
        t0 = time.perf_counter()
        out = engine.generate([Request.from_json(p, c, max_tokens=max_tokens) for p, c in zip(prompts, comps)])
        ok = [is_match(t, r.text, e.answer) for (t, e), r in zip(flat, out)]
        per = {t: round(sum(o for (tt, _), o in zip(flat, ok) if tt == t) / len(examples[t]), 4) for t in experts}
        samples = [
            {"task": t, "gold": e.answer, "prediction": r.text}
            for (t, e), r in list(zip(flat, out))[:: max(1, len(flat) // 6)]
        ]
        return {
            **per,
            "mean": round(sum(per.values()) / len(per), 4),
            "eval_s": round(time.perf_counter() - t0, 1),
            "samples": samples,
        }

    systems = {}
    for name, k in (("moe_top1", 1), ("moe_top2_soft", 2)):
        comps = [d.composition() for d in decide(logits, experts, PolicyConfig(top_k=k, confidence_floor=0.0))]
        systems[name] = run(comps)
    systems["oracle_task_label"] = run([t for t, _ in flat])  # the adapter named after the task
    return systems


def compare(
    models: Path,
    out: Path,
    cfg: JointConfig,
    separate: TrainConfig,
    separate_n_per_task: int = 800,
    n: int = 100,
    max_tokens: int = 40,
    progress: bool = True,
) -> dict:
    """Train jointly into ``out`` (``adapters/``, ``router/``), train the separate router into
    ``out/separate_router``, evaluate both pipelines on ``n`` held-out examples per task; returns the report.

    Wall times: the separate pipeline is charged the demo build's recorded adapter times plus its
    router training, the joint one its whole training run.
    """
    models, out = Path(models), Path(out)
    base_path = str(base_dir(models))
    experts = list(cfg.experts)
    manifest = json.loads((models / "manifest.json").read_text())
    t_total = time.perf_counter()

    # ---- 1. joint training -------------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    init_adapters = {t: adapter_dir(models, t) for t in experts} if cfg.init == "demo" else None
    result = train_joint(model, tokenizer, cfg, base_path=base_path, init_adapters=init_adapters, progress=progress)
    save_joint(result, out, base_path=base_path, metrics={"joint_training": result.stats, "config": cfg.to_dict()})
    result.mixer.remove()

    # ---- 2. separately trained router (same featurizer kind) over the demo adapters -----------
    t0, c0 = time.perf_counter(), time.process_time()
    feat = HiddenStateFeaturizer.from_path(base_path, "mean")
    train = routing_data("train", separate_n_per_task, separate.seed)
    sep_net, sep_hist = fit_router(feat, train, separate, progress=progress)
    sep_router_s, sep_router_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    Router(feat, sep_net, train.experts, PolicyConfig(), {"train": sep_hist[-1]}).save(out / "separate_router")
    sep_adapter_s = sum(manifest["timings"][f"adapter_{t}_s"] for t in experts)

    # ---- 3. held-out evaluation through the real engine ----------------------------------------
    examples = heldout_examples(n, cfg.seed)
    prompts = [e.prompt for t in experts for e in examples[t]]
    gold = torch.tensor([i for i, t in enumerate(experts) for _ in examples[t]])
    joint_router = Router.load(out / "router", featurizer=feat)  # the saved artefact, sharing the base
    with torch.inference_mode():
        x_eval = featurize(feat, prompts)
        joint_logits = joint_router.net(x_eval)
        sep_logits = sep_net.eval()(x_eval)
    report: dict = {
        "tasks": experts,
        "n_per_task": n,
        "seed": cfg.seed,
        "joint_config": cfg.to_dict(),
        "demo_adapter_steps": manifest["config"]["lora_steps"],
    }
    pipelines = (
        (
            "joint",
            out / "adapters",
            joint_logits,
            result.stats["wall_s"],
            {"training": result.stats, "history": result.history},
        ),
        (
            "separate",
            adapter_dir(models, experts[0]).parent,
            sep_logits,
            sep_adapter_s + sep_router_s,
            {
                "adapters_wall_s": round(sep_adapter_s, 2),
                "router_wall_s": round(sep_router_s, 2),
                "router_cpu_s": round(sep_router_cpu_s, 2),
                "router_train": sep_hist[-1],
            },
        ),
    )
    for pipe, root, logits, wall, extra in pipelines:
        engine = Engine.from_config(
            EngineConfig(
                base_model=base_path, adapter_roots=[str(root)], max_slots=4, max_host_adapters=8, device="cpu"
            )
        )
        systems = evaluate_pipeline(engine, logits, examples, experts, max_tokens)
        report[pipe] = {
            "adapters": str(root),
            "train_wall_s": round(wall, 2),
            "router": router_metrics(logits, gold, experts),
            "systems": systems,
            **extra,
        }
        del engine
    report["total_script_s"] = round(time.perf_counter() - t_total, 1)
    j, s = report["joint"]["systems"], report["separate"]["systems"]
    report["verdict"] = {
        k: {
            "joint": j[k]["mean"],
            "separate": s[k]["mean"],
            "joint_minus_separate": round(j[k]["mean"] - s[k]["mean"], 4),
        }
        for k, _ in SYSTEMS
    }
    return report


def render_markdown(report: dict) -> str:
    """One row per pipeline x routing system: exact match per task, mean, router accuracy, training wall time."""
    tasks = report["tasks"]
    lines = [
        "| pipeline | routing | " + " | ".join(tasks) + " | mean | router acc | train wall time |",
        "|---|---|" + "---:|" * (len(tasks) + 3),
    ]
    for pipe in ("joint", "separate"):
        r = report[pipe]
        acc = f"{100 * r['router']['accuracy']:.1f}%"
        if pipe == "joint" and r["router"]["accuracy_best_permutation"] != r["router"]["accuracy"]:
            acc += f" ({100 * r['router']['accuracy_best_permutation']:.1f}% up to relabelling)"
        for sys_name, label in SYSTEMS:
            s = r["systems"][sys_name]
            lines.append(
                f"| {pipe} | {label} | "
                + " | ".join(f"{100 * s[t]:.1f}%" for t in tasks)
                + f" | {100 * s['mean']:.1f}% | {acc if sys_name != 'oracle_task_label' else '-'} | "
                + (f"{r['train_wall_s']:.0f} s" if sys_name == "moe_top1" else "")
                + " |"
            )
    return "\n".join(lines) + "\n"
