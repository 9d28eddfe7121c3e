#!/usr/bin/env python
"""Train the MoE router and the three LoRA experts jointly on the mixed multi-task demo data, then
compare against the separately trained pipeline (demo adapters + a separately trained router).

Joint: frozen demo base, three fresh LoRA experts (the demo's LoraConfig) and a RouterNet over the
base model's mean-pooled last hidden state, trained together with soft top-k routing (gradients reach
the router and the selected experts). Separate: the demo's per-task adapters + a hidden-state router
trained with loraplex.router.training.train_router (same featurizer kind). Both are scored by exact match on
the held-out split through the real Engine (moe top-1, moe top-2 soft, and the task-label oracle).

    python scripts/train_joint.py --models models/demo --out models/joint --json docs/joint_training.json
    python scripts/train_joint.py --router-ce 1.0 --out models/joint_ce --json docs/joint_training_ce.json

Writes OUT/adapters/{intent,sentiment,entities} (PEFT folders), OUT/router (Router.save),
OUT/separate_router, the JSON report, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

# On a shared CPU box, OpenMP's default spin-waiting makes every extra thread fight the other jobs
# (measured: 2 spinning threads were ~5x slower per step than 1); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from loraplex.demo.build import DemoConfig
    from loraplex.demo.joint_training import joint_lora_lr

    demo = DemoConfig()
    default_steps = sum(demo.lora_steps.values())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=Path("models/demo"), help="built demo folder (base/, adapters/, manifest.json)")
    p.add_argument("--out", type=Path, default=Path("models/joint"), help="output folder for the joint adapters and router")
    p.add_argument("--steps", type=int, default=None,
                   help=f"joint optimisation steps (default: the demo manifest's adapter steps summed, {default_steps} for DemoConfig, "
                        "i.e. the same number of training examples per task as the separately trained adapters)")
    p.add_argument("--batch", type=int, default=None, help=f"mixed-task examples per step (default: the demo's lora_batch, {demo.lora_batch})")
    p.add_argument("--top-k", type=int, default=2, help="experts blended per example during training (soft, renormalised)")
    p.add_argument("--router-ce", type=float, default=0.0, help="weight of an extra router CE on the task label (0 = off: the router learns from the LM loss only)")
    p.add_argument("--balance-coef", type=float, default=0.01, help="weight of the Switch load-balancing loss")
    p.add_argument("--z-coef", type=float, default=1e-3, help="weight of the router z-loss")
    p.add_argument("--lr", type=float, default=None, help=f"LoRA learning rate (default: the largest of the demo's per-task lora_lr, {joint_lora_lr(demo.lora_lr)})")
    p.add_argument("--router-lr", type=float, default=2e-3, help="router learning rate")
    p.add_argument("--init", choices=["fresh", "demo"], default="fresh", help="fresh PEFT init (fair comparison) or start from the demo adapters")
    p.add_argument("--n", type=int, default=100, help="held-out examples per task for the evaluation")
    p.add_argument("--max-tokens", type=int, default=40, help="generation budget per request")
    p.add_argument("--sep-n-per-task", type=int, default=800, help="separate router: training prompts per task (scripts/train_router.py default)")
    p.add_argument("--sep-epochs", type=int, default=40, help="separate router: epochs (scripts/train_router.py default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core box; use 2+ on an idle machine)")
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    p.add_argument("--markdown", type=Path, default=None, help="also write the Markdown table here")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    return p.parse_args(argv)


def best_permutation_accuracy(confusion: list[list[int]]) -> float:
    """Routing accuracy up to a relabelling of the experts (does the router separate the tasks at all?)."""
    n = len(confusion)
    total = sum(map(sum, confusion))
    best = max(sum(confusion[t][perm[t]] for t in range(n)) for perm in itertools.permutations(range(n)))
    return best / total if total else float("nan")


def router_metrics(logits, gold, experts: list[str]) -> dict:
    import torch

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


def evaluate_pipeline(engine, logits, examples: dict, experts: list[str], max_tokens: int) -> dict:
    """Exact match per task for moe top-1, moe top-2 soft and the task-label oracle through the engine."""
    from loraplex.demo.evaluation import is_match
    from loraplex.experts.engine import Request
    from loraplex.router.policy import PolicyConfig, decide

    flat = [(t, e) for t in experts for e in examples[t]]
    prompts = [e.prompt for _, e in flat]

    def run(comps: list) -> dict:
        t0 = time.perf_counter()
        out = engine.generate([Request.from_json(p, c, max_tokens=max_tokens) for p, c in zip(prompts, comps)])
        ok = [is_match(t, r.text, e.answer) for (t, e), r in zip(flat, out)]
        per = {t: round(sum(o for (tt, _), o in zip(flat, ok) if tt == t) / len(examples[t]), 4) for t in experts}
        return {**per, "mean": round(sum(per.values()) / len(per), 4), "eval_s": round(time.perf_counter() - t0, 1),
                "samples": [{"task": t, "gold": e.answer, "prediction": r.text} for (t, e), r in list(zip(flat, out))[:: max(1, len(flat) // 6)]]}

    systems = {}
    for name, k in (("moe_top1", 1), ("moe_top2_soft", 2)):
        comps = [d.composition() for d in decide(logits, experts, PolicyConfig(top_k=k, confidence_floor=0.0))]
        systems[name] = run(comps)
    systems["oracle_task_label"] = run([t for t, _ in flat])  # the adapter named after the task
    return systems


def markdown(report: dict) -> str:
    tasks = report["tasks"]
    lines = ["| pipeline | routing | " + " | ".join(tasks) + " | mean | router acc | train wall time |",
             "|---|---|" + "---:|" * (len(tasks) + 3)]
    for pipe in ("joint", "separate"):
        r = report[pipe]
        acc = f"{100 * r['router']['accuracy']:.1f}%"
        if pipe == "joint" and r["router"]["accuracy_best_permutation"] != r["router"]["accuracy"]:
            acc += f" ({100 * r['router']['accuracy_best_permutation']:.1f}% up to relabelling)"
        for sys_name, label in (("moe_top1", "router top-1"), ("moe_top2_soft", "router top-2 soft"), ("oracle_task_label", "task-label oracle")):
            s = r["systems"][sys_name]
            lines.append(f"| {pipe} | {label} | " + " | ".join(f"{100 * s[t]:.1f}%" for t in tasks)
                         + f" | {100 * s['mean']:.1f}% | {acc if sys_name != 'oracle_task_label' else '-'} | "
                         + (f"{r['train_wall_s']:.0f} s" if sys_name == "moe_top1" else "") + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from loraplex.config.engine import EngineConfig
    from loraplex.demo.build import ADAPTER_TASKS, adapter_dir, base_dir, demo_is_built
    from loraplex.demo.evaluation import heldout_examples
    from loraplex.experts.engine import Engine
    from loraplex.demo.routing_data import routing_data
    from loraplex.router.featurizers import HiddenStateFeaturizer
    from loraplex.demo.joint_training import JointConfig, joint_lora_lr, save_joint, train_joint
    from loraplex.router.router import Router
    from loraplex.router.policy import PolicyConfig
    from loraplex.router.training import TrainConfig, train_router

    if not demo_is_built(a.models):
        print(f"no built demo at {a.models}: run `make demo` (scripts/build_demo.py) first", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    hf_logging.disable_progress_bar()
    progress = not a.no_progress
    base_path = str(base_dir(a.models))
    experts = list(ADAPTER_TASKS)
    manifest = json.loads((a.models / "manifest.json").read_text())
    t_total = time.perf_counter()

    # ---- 1. joint training -------------------------------------------------------------------
    # LoRA shape, data and per-task mix follow the demo's own recorded config (the separate pipeline's)
    dc = manifest["config"]
    cfg = JointConfig(steps=a.steps or sum(dc["lora_steps"][t] for t in experts), batch=a.batch or dc["lora_batch"], top_k=a.top_k,
                      lora_lr=a.lr or joint_lora_lr(dc["lora_lr"]), warmup=dc["lora_warmup"], router_lr=a.router_lr, balance_coef=a.balance_coef,
                      z_coef=a.z_coef, router_ce_coef=a.router_ce, init=a.init, experts=tuple(experts),
                      task_mix={t: dc["lora_steps"][t] for t in experts}, train_examples={t: dc["train_examples"][t] for t in experts},
                      lora_r=dc["lora_r"], lora_alpha=dc["lora_alpha"], seed=a.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    result = train_joint(model, tokenizer, cfg, base_path=base_path,
                         init_adapters={t: adapter_dir(a.models, t) for t in experts} if a.init == "demo" else None, progress=progress)
    save_joint(result, a.out, base_path=base_path, metrics={"joint_training": result.stats, "config": cfg.to_dict()})
    result.mixer.remove()

    # ---- 2. separately trained router (same featurizer kind) over the demo adapters -----------
    t0, c0 = time.perf_counter(), time.process_time()
    feat = HiddenStateFeaturizer.from_path(base_path, "mean")
    train = routing_data("train", a.sep_n_per_task, a.seed)
    x_train = torch.cat([feat.encode(train.texts[i: i + 64]) for i in range(0, len(train.texts), 64)])
    sep_net, sep_hist = train_router(x_train, train.targets, TrainConfig(epochs=a.sep_epochs, seed=a.seed), progress=progress)
    sep_router_s, sep_router_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    Router(feat, sep_net, train.experts, PolicyConfig(), {"train": sep_hist[-1]}).save(a.out / "separate_router")
    sep_adapter_s = sum(manifest["timings"][f"adapter_{t}_s"] for t in experts)

    # ---- 3. held-out evaluation through the real engine ----------------------------------------
    examples = heldout_examples(a.n, a.seed)
    prompts = [e.prompt for t in experts for e in examples[t]]
    gold = torch.tensor([i for i, t in enumerate(experts) for _ in examples[t]])
    joint_router = Router.load(a.out / "router", featurizer=feat)  # the saved artefact, sharing the base
    with torch.inference_mode():
        x_eval = torch.cat([feat.encode(prompts[i: i + 64]) for i in range(0, len(prompts), 64)])
        joint_logits = joint_router.net(x_eval)
        sep_logits = sep_net.eval()(x_eval)
    report: dict = {"tasks": experts, "n_per_task": a.n, "seed": a.seed, "joint_config": cfg.to_dict(),
                    "demo_adapter_steps": manifest["config"]["lora_steps"]}
    for pipe, root, logits, wall, extra in (
        ("joint", a.out / "adapters", joint_logits, result.stats["wall_s"], {"training": result.stats, "history": result.history}),
        ("separate", adapter_dir(a.models, experts[0]).parent, sep_logits, sep_adapter_s + sep_router_s,
         {"adapters_wall_s": round(sep_adapter_s, 2), "router_wall_s": round(sep_router_s, 2), "router_cpu_s": round(sep_router_cpu_s, 2), "router_train": sep_hist[-1]}),
    ):
        engine = Engine.from_config(EngineConfig(base_model=base_path, adapter_roots=[str(root)], max_slots=4, max_host_adapters=8, device="cpu"))
        systems = evaluate_pipeline(engine, logits, examples, experts, a.max_tokens)
        report[pipe] = {"adapters": str(root), "train_wall_s": round(wall, 2), "router": router_metrics(logits, gold, experts),
                        "systems": systems, **extra}
        del engine
    report["total_script_s"] = round(time.perf_counter() - t_total, 1)
    j, s = report["joint"]["systems"], report["separate"]["systems"]
    report["verdict"] = {k: {"joint": j[k]["mean"], "separate": s[k]["mean"], "joint_minus_separate": round(j[k]["mean"] - s[k]["mean"], 4)}
                         for k in ("moe_top1", "moe_top2_soft", "oracle_task_label")}
    md = markdown(report)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2))
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(md)
    print(md)
    print(json.dumps({"verdict": report["verdict"], "joint_router": {k: report["joint"]["router"][k] for k in ("accuracy", "accuracy_best_permutation", "share")},
                      "total_script_s": report["total_script_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
