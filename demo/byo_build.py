"""Train "bring your own" LoRA adapters for the two extra tasks on the demo base model.

Why: the routing evaluation needs adapters the demo router was never built around, trained the way a
user would train theirs: a real PEFT LoRA on the shipped base model, saved with ``save_pretrained``,
plus a handful of example prompts per adapter for the router. Reading the finished directory needs
nothing from this module. Produces, under ``out_dir`` (default ``models/byo``)::

    adapters/priority/            PEFT LoRA (adapter_config.json + adapter_model.safetensors)
        routing_examples.jsonl    8 lines {"prompt": ...}: train phrasings, for the router
    adapters/summary/             the same for the summary task
    heldout.jsonl                 {"prompt": ..., "adapter": task}: unseen phrasings and messages,
                                  100 per task for all five tasks (demo's three + these two); the
                                  exact format ``loraplex.router.dataset.load_jsonl`` reads
    byo_report.json               training stats + held-out exact match (greedy, base + adapter via PEFT)

The LoRA shape (rank, alpha, target modules), batch, warmup and the training loop are the demo's own
(:func:`loraplex.demo.build.train_lora_on_examples`), so the serving engine loads these adapters
exactly like the demo's. Seeded; a few minutes on two CPU cores.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loraplex.demo import byo_tasks
from loraplex.demo import data as demo_data
from loraplex.demo.build import (
    ADAPTERS_DIRNAME,
    BASE_DIRNAME,
    LORA_TARGET_MODULES,
    DemoConfig,
    atomic_build,
    train_lora_on_examples,
)
from loraplex.demo.evaluation import evaluate, peft_generate_fn

REPORT_NAME = "byo_report.json"
HELDOUT_NAME = "heldout.jsonl"
ROUTING_EXAMPLES_NAME = "routing_examples.jsonl"
ALL_TASKS = demo_data.TASKS + byo_tasks.BYO_TASKS


@dataclass(frozen=True)
class ByoConfig:
    """The knobs of this build that are not the demo's (recorded in the report).

    Rank, alpha, batch size, warmup and weight decay come from :class:`~loraplex.demo.build.DemoConfig`
    on purpose: same LoRA shape as the demo adapters.
    """

    # Summary copies unseen products and needs about twice the steps of a classifier (loss still falls
    # at 300); on 2 free cores its 400 steps take ~130 s, priority's 200 ~70 s.
    lora_lr: dict[str, float] = field(default_factory=lambda: {"priority": 2e-3, "summary": 3e-3})
    lora_steps: dict[str, int] = field(default_factory=lambda: {"priority": 200, "summary": 400})
    train_examples: dict[str, int] = field(default_factory=lambda: {"priority": 4000, "summary": 6000})
    heldout_examples: int = 100  # per task, in heldout.jsonl and in the report's accuracy
    routing_examples: int = 8  # per adapter, in routing_examples.jsonl
    max_new_tokens: int = 24  # a heldout summary is at most 6 words, well under 20 tokens
    threads: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def heldout_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` heldout prompts per task for all five tasks, as ``{"prompt", "adapter", "answer"}`` rows: the
    answer lets ``scripts/eval_routing.py --data --base-model`` score the served output against the
    labelled adapter's (training ignores it)."""
    rows: list[dict[str, Any]] = []
    for task in ALL_TASKS:
        if task in demo_data.TASKS:
            examples = demo_data.make_examples(task, n, seed, "heldout")
        else:
            examples = byo_tasks.make_byo_examples(task, n, seed, "heldout")
        rows += [{"prompt": e.prompt, "adapter": task, "answer": e.answer} for e in examples]
    return rows


def build_byo(
    models_dir: Path, out_dir: Path, seed: int = 0, progress: bool = True, config: ByoConfig | None = None
) -> dict:
    """Train the ``priority`` and ``summary`` adapters on ``models_dir/base`` and write ``out_dir``.

    Returns the report (also written to ``out_dir/byo_report.json``). Builds into a sibling temp
    directory and swaps it in at the end, so a failed build never leaves half an ``out_dir``.
    """
    models_dir, out_dir = Path(models_dir), Path(out_dir)
    base_path = models_dir / BASE_DIRNAME
    if not (base_path / "config.json").is_file() or not (base_path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no demo base model at {base_path} (needs config.json and tokenizer.json); "
            "build it first: python scripts/build_demo.py"
        )

    import peft
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config or ByoConfig()
    demo_cfg = DemoConfig()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with atomic_build(out_dir, cfg.threads, seed) as tmp_dir:
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        model.eval()

        adapter_stats: dict[str, dict[str, Any]] = {}
        for k, task in enumerate(byo_tasks.BYO_TASKS):
            t0 = time.perf_counter()
            examples = byo_tasks.make_byo_examples(task, cfg.train_examples[task], seed, "train")
            peft_model, stats = train_lora_on_examples(
                model,
                tokenizer,
                examples,
                demo_cfg,
                lr=cfg.lora_lr[task],
                steps=cfg.lora_steps[task],
                seed=seed * 1000 + 201 + k,  # disjoint from the demo adapters' 101 + k
                base_path=str(base_path),
                progress=progress,
                desc=f"adapter {task}",
            )
            target = tmp_dir / ADAPTERS_DIRNAME / task
            peft_model.save_pretrained(target)
            # PEFT's boilerplate model card embeds the build path: drop it (determinism).
            (target / "README.md").unlink(missing_ok=True)
            model = peft_model.unload()  # drop the LoRA layers: pristine base for the next task
            prompts = byo_tasks.routing_examples(task, cfg.routing_examples, seed)
            _write_jsonl(target / ROUTING_EXAMPLES_NAME, [{"prompt": p} for p in prompts])
            timings[f"adapter_{task}_s"] = time.perf_counter() - t0
            adapter_stats[task] = stats

        t0 = time.perf_counter()
        rows = heldout_rows(cfg.heldout_examples, seed)
        _write_jsonl(tmp_dir / HELDOUT_NAME, rows)
        del model  # evaluation reloads the base and the saved adapters: it checks the files, not memory
        gen = peft_generate_fn(
            base_path,
            tmp_dir / ADAPTERS_DIRNAME,
            max_new_tokens=cfg.max_new_tokens,
            adapters=list(byo_tasks.BYO_TASKS),
        )
        heldout = {
            t: byo_tasks.make_byo_examples(t, cfg.heldout_examples, seed, "heldout") for t in byo_tasks.BYO_TASKS
        }
        results = evaluate(gen, heldout, list(byo_tasks.BYO_TASKS), include_base=True)
        timings["evaluation_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start

        report = {
            "name": "loraplex-byo-adapters",
            "seed": seed,
            "base_model": str(base_path),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
            "lora": {
                "r": demo_cfg.lora_r,
                "alpha": demo_cfg.lora_alpha,
                "target_modules": list(LORA_TARGET_MODULES),
                "batch": demo_cfg.lora_batch,
                "warmup": demo_cfg.lora_warmup,
            },
            "config": cfg.to_dict(),
            "adapters": {
                task: {
                    "path": f"{ADAPTERS_DIRNAME}/{task}",
                    "routing_examples": f"{ADAPTERS_DIRNAME}/{task}/{ROUTING_EXAMPLES_NAME}",
                    "instruction_phrasings": {s: len(byo_tasks.instructions_for(task, s)) for s in demo_data.SPLITS},
                    **adapter_stats[task],
                    "heldout_examples": results["n"][task],
                    "heldout_correct": results["correct"][task][task],
                    "heldout_accuracy": round(results["accuracy"][task][task], 4),
                    "base_heldout_accuracy": round(results["accuracy"]["base"][task], 4),
                    "samples": results["samples"][task][task],
                }
                for task in byo_tasks.BYO_TASKS
            },
            # rows: base / each adapter; columns: each task's held-out set (off-diagonal: transfer)
            "accuracy_matrix": {
                row: {t: round(a, 4) for t, a in accs.items()} for row, accs in results["accuracy"].items()
            },
            "heldout": {"path": HELDOUT_NAME, "per_task": cfg.heldout_examples, "tasks": list(ALL_TASKS)},
            "timings": {k: round(v, 2) for k, v in timings.items()},
        }
        (tmp_dir / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
