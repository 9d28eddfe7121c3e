"""Held-out evaluation of the embedded demo: the adapter x task transfer matrix.

:func:`evaluate` is backend-agnostic: it only needs ``generate_fn(prompts, adapter)``
returning greedy completions (answer text, stripped, cut at EOS), with ``adapter=None``
meaning the bare base model. :func:`peft_generate_fn` is the default backend, built on
PEFT multi-adapter batches (``model.generate(..., adapter_names=[...])``).

Exact match: ``intent``/``sentiment`` compare the stripped completion with the gold
label; ``entities`` requires the completion to parse as a JSON object equal to the gold
``{"order_id": ..., "email": ...}`` dict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loraplex.demo.data import TASKS, Example

BASE_ROW = "base"
PEFT_BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" inside adapter_names

GenerateFn = Callable[[list[str], "str | None"], list[str]]


def is_match(task: str, prediction: str, gold: str) -> bool:
    """Exact-match scoring for one completion."""
    prediction = prediction.strip()
    if task == "entities":
        try:
            parsed = json.loads(prediction)
        except (ValueError, TypeError):
            return False
        return isinstance(parsed, dict) and parsed == json.loads(gold)
    return prediction == gold.strip()


def evaluate(
    generate_fn: GenerateFn,
    tasks_examples: Mapping[str, Sequence[Example]],
    adapters: Sequence[str],
    include_base: bool = True,
    n_samples: int = 3,
) -> dict[str, Any]:
    """Exact-match accuracy of every row (base + each adapter) on every task.

    Returns ``{"tasks", "rows", "n", "correct", "accuracy", "samples"}`` where
    ``accuracy[row][task]`` is a float in [0, 1] and ``samples[row][task]`` holds the
    first ``n_samples`` (gold, prediction) pairs for inspection.
    """
    tasks = [t for t in TASKS if t in tasks_examples] + [t for t in tasks_examples if t not in TASKS]
    rows: list[tuple[str, str | None]] = [(BASE_ROW, None)] if include_base else []
    rows += [(a, a) for a in adapters]
    correct: dict[str, dict[str, int]] = {}
    accuracy: dict[str, dict[str, float]] = {}
    samples: dict[str, dict[str, list[dict[str, str]]]] = {}
    for row, adapter in rows:
        correct[row], accuracy[row], samples[row] = {}, {}, {}
        for task in tasks:
            examples = list(tasks_examples[task])
            preds = generate_fn([e.prompt for e in examples], adapter)
            if len(preds) != len(examples):
                raise RuntimeError(f"generate_fn returned {len(preds)} completions for {len(examples)} prompts")
            ok = sum(is_match(task, p, e.answer) for p, e in zip(preds, examples))
            correct[row][task] = ok
            accuracy[row][task] = ok / len(examples) if examples else 0.0
            samples[row][task] = [
                {"gold": e.answer, "prediction": p} for e, p in zip(examples[:n_samples], preds[:n_samples])
            ]
    return {
        "tasks": tasks,
        "rows": [r for r, _ in rows],
        "n": {t: len(tasks_examples[t]) for t in tasks},
        "correct": correct,
        "accuracy": accuracy,
        "samples": samples,
    }


def render_markdown(results: Mapping[str, Any]) -> str:
    """The transfer matrix as a Markdown table (rows: base/adapters, columns: tasks)."""
    tasks = list(results["tasks"])
    header = "| model \\ held-out task | " + " | ".join(f"{t} (n={results['n'][t]})" for t in tasks) + " |"
    sep = "|---|" + "---:|" * len(tasks)
    lines = [header, sep]
    for row in results["rows"]:
        label = "base (no adapter)" if row == BASE_ROW else f"adapter `{row}`"
        cells = []
        for t in tasks:
            cell = f"{100.0 * results['accuracy'][row][t]:.1f}%"
            cells.append(f"**{cell}**" if row == t else cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def peft_generate_fn(
    base_dir: str | Path,
    adapters_dir: str | Path,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    adapters: Sequence[str] | None = None,
    threads: int | None = None,
) -> GenerateFn:
    """A greedy ``generate_fn`` over the base model plus every adapter under ``adapters_dir``.

    All adapters are loaded into one ``PeftModel``; each batch passes
    ``adapter_names=[name] * batch`` (``"__base__"`` for the bare base model).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if threads is not None:
        torch.set_num_threads(threads)
    base_dir, adapters_dir = Path(base_dir), Path(adapters_dir)
    if adapters is None:
        adapters = sorted(p.name for p in adapters_dir.iterdir() if (p / "adapter_config.json").is_file())
    if not adapters:
        raise FileNotFoundError(f"no adapters found under {adapters_dir}")

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapters_dir / adapters[0], adapter_name=adapters[0])
    for name in adapters[1:]:
        model.load_adapter(adapters_dir / name, adapter_name=name)
    model.eval()
    known = set(model.peft_config)

    def generate(prompts: list[str], adapter: str | None) -> list[str]:
        name = PEFT_BASE_ADAPTER if adapter is None else adapter
        # Validate BEFORE generate: PEFT leaks forward hooks if generate(adapter_names=...) raises.
        if name != PEFT_BASE_ADAPTER and name not in known:
            raise KeyError(f"unknown adapter {adapter!r}; loaded: {sorted(known)}")
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be strings")
        outputs: list[str] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=True)
            with torch.inference_mode():
                gen = model.generate(
                    **enc,
                    adapter_names=[name] * len(chunk),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            for row in new.tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id)]
                outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        return outputs

    generate.adapters = tuple(adapters)  # type: ignore[attr-defined]
    return generate


def heldout_examples(n: int, seed: int = 0, tasks: Sequence[str] = TASKS) -> dict[str, list[Example]]:
    """``n`` held-out examples per task (disjoint seeds and phrasings from training)."""
    from loraplex.demo.data import make_examples

    return {t: make_examples(t, n, seed, "heldout") for t in tasks}


def free_dev_examples(n: int, seed: int = 0, tasks: Sequence[str] = TASKS) -> dict[str, list[Example]]:
    """``n`` free-phrased ``dev`` examples per task (:mod:`loraplex.demo.phrasing`: parts, layouts and
    pools disjoint from training; a third through the chat template). The set hyper-parameters are
    chosen on; the hand-written free-phrasing set never is."""
    from loraplex.demo.phrasing import make_free_examples

    return {t: make_free_examples(t, n, seed, "dev") for t in tasks}


EVAL_SPLITS = {"heldout": heldout_examples, "free_dev": free_dev_examples}


def evaluate_demo(
    models_dir: str | Path,
    n: int = 200,
    seed: int = 0,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    split: str = "heldout",
) -> dict[str, Any]:
    """Full eval of a built demo directory with the PEFT backend on ``split`` (:data:`EVAL_SPLITS`)."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(EVAL_SPLITS)}")
    models_dir = Path(models_dir)
    gen = peft_generate_fn(models_dir / "base", models_dir / "adapters", max_new_tokens, batch_size)
    adapters = [t for t in TASKS if t in gen.adapters] + [a for a in gen.adapters if a not in TASKS]
    results = evaluate(gen, EVAL_SPLITS[split](n, seed), adapters)
    results["models_dir"] = str(models_dir)
    results["split"] = split
    results["heldout_seed"] = seed
    return results
