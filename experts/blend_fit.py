"""Fit a blend's weights on labelled examples: gradient descent on the weights alone, base and adapters frozen.

LoraHub fits blend weights from a few examples, and the reference article trains its ensemble's blend
weights ("after training, weights settle to task importance"); serving then needs the *same* math the
fit optimised. So the weights are `softmax(theta)` (non-negative, summing to 1: a convex mix of the
adapters) and the objective is exactly what the engine runs for that composition:

- **logits space** (`blend`, `space: logits`): the engine mixes `base + sum_i w_i (logits_i - base)`,
  which with `sum_i w_i = 1` is `sum_i w_i logits_i`. Base and adapters run once per example
  (teacher-forced) and their completion-position logits are kept; an epoch is then a weighted sum and a
  cross-entropy, no model forward.
- **delta space** (`blend`, `space: delta`): every target linear computes `W x + sum_i w_i s_i B_i A_i x`
  (what `MultiLoraLinear` does for a weighted row). Each epoch runs the model with forward hooks adding
  that term, gradients flowing into `theta` only.

The loss is the mean cross-entropy of the completion tokens given the prompt. A held-out split picks the
best epoch (early stopping on its loss); token accuracy is reported per epoch.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loraplex.experts.errors import RequestError

Progress = Callable[[dict], None]
EPOCHS, LR, PATIENCE, HELDOUT = 100, 0.05, 15, 0.25  # defaults of `fit`, `run_fit` and scripts/fit_composition.py


@dataclass(frozen=True)
class FitExample:
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]


@dataclass
class FitResult:
    weights: dict[str, float]
    best_epoch: int
    history: list[dict] = field(default_factory=list)  # per epoch: train/heldout loss and token accuracy


def read_examples(path: Path | str) -> list[dict[str, str]]:
    """`{"prompt", "completion"}` lines; every bad line is reported at once."""
    rows, problems = [], []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {i}: not JSON ({e.msg})")
            continue
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("prompt"), str)
            or not isinstance(row.get("completion"), str)
        ):
            problems.append(f"line {i}: expected {{'prompt': str, 'completion': str}}")
            continue
        rows.append({"prompt": row["prompt"], "completion": row["completion"]})
    if problems:
        raise RequestError(f"{path}: " + "; ".join(problems[:10]))
    if len(rows) < 4:
        raise RequestError(f"{path}: {len(rows)} examples; fitting needs at least 4 (some are held out)")
    return rows


def encode_examples(tokenizer, rows: Sequence[Mapping[str, str]]) -> list[FitExample]:
    """Prompt tokens as the engine encodes a text prompt; the completion's tokens after them."""
    out = []
    for i, r in enumerate(rows):
        prompt = tokenizer(r["prompt"])["input_ids"]
        completion = tokenizer(r["completion"], add_special_tokens=False)["input_ids"]
        if not completion:
            raise RequestError(f"example {i}: the completion {r['completion']!r} has no tokens")
        out.append(FitExample(tuple(prompt), tuple(completion)))
    return out


def split(examples: Sequence, heldout: float, seed: int) -> tuple[list, list]:
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    n_held = max(1, round(heldout * len(idx)))
    return [examples[i] for i in idx[n_held:]], [examples[i] for i in idx[:n_held]]


def _batch(examples: Sequence[FitExample], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and the targets (-100 except at completion tokens)."""
    seqs = [list(e.prompt_ids) + list(e.completion_ids) for e in examples]
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)  # [batch, seq]
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    targets = torch.full((len(seqs), n), -100, dtype=torch.long)
    for b, (e, s) in enumerate(zip(examples, seqs)):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
        p = len(e.prompt_ids)
        targets[b, p - 1 : len(s) - 1] = torch.tensor(e.completion_ids)  # position t predicts token t + 1
    return ids, mask, targets


def _scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(summed CE, correct argmax count, tokens) over the positions with a target."""
    keep = targets != -100
    lg, tg = logits[keep], targets[keep]  # [tokens, vocab], [tokens]
    ce = torch.nn.functional.cross_entropy(lg.float(), tg, reduction="sum")
    return ce, (lg.argmax(-1) == tg).sum(), int(tg.numel())


class LogitsObjective:
    """Logits-space blend: the frozen logits of each adapter at the completion positions, computed once."""

    def __init__(self, model, adapters: Mapping[str, Mapping], pad: int, batch: int = 16):
        self.names = list(adapters)
        self.sets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._model, self._pad, self._batch = model, pad, batch
        self._hooks = DeltaHooks(model, adapters)  # one adapter at a time (one-hot weights)

    def frozen(self, examples: Sequence[FitExample]) -> tuple[torch.Tensor, torch.Tensor]:
        """([tokens, adapters, vocab] logits, [tokens] targets) of `examples`, each adapter alone."""
        key = id(examples)
        if key not in self.sets:
            per_adapter, targets = [], None
            with torch.inference_mode():
                for i in range(len(self.names)):
                    onehot = torch.zeros(len(self.names))
                    onehot[i] = 1.0
                    chunks, tchunks = [], []
                    for s in range(0, len(examples), self._batch):
                        ids, mask, tg = _batch(examples[s : s + self._batch], self._pad)
                        with self._hooks.weights(onehot):
                            lg = self._model(input_ids=ids, attention_mask=mask).logits  # [b, seq, vocab]
                        keep = tg != -100
                        chunks.append(lg[keep].float())
                        tchunks.append(tg[keep])
                    per_adapter.append(torch.cat(chunks))
                    targets = torch.cat(tchunks)
            self.sets[key] = (torch.stack(per_adapter, dim=1), targets)  # [tokens, adapters, vocab]
        return self.sets[key]

    def close(self) -> None:
        """Take the hooks off the model (the engine keeps serving it)."""
        self._hooks.remove()

    def score(self, weights: torch.Tensor, examples: Sequence[FitExample]) -> tuple[torch.Tensor, torch.Tensor, int]:
        logits, targets = self.frozen(examples)
        mixed = torch.einsum("tav,a->tv", logits, weights)  # [tokens, vocab]
        return _scores(mixed, targets)


class DeltaHooks:
    """Forward hooks adding `sum_i w_i s_i B_i (A_i x)` to each target linear; `w` set per call (differentiable)."""

    def __init__(self, model, adapters: Mapping[str, Mapping]):
        self.names = list(adapters)
        self.w: torch.Tensor | None = None
        modules = dict(model.named_modules())
        self._handles = []
        targets = sorted({m for a in adapters.values() for m in a})
        missing = [m for m in targets if m not in modules]
        if missing:
            raise RequestError(f"adapter modules not in the base model: {missing[:5]}")
        for m in targets:
            parts = [(i, a[m]) for i, a in enumerate(adapters.values()) if m in a]  # (adapter index, (A, B, s))
            self._handles.append(modules[m].register_forward_hook(self._hook(parts)))

    def _hook(self, parts):
        def hook(_module, inputs, output):
            if self.w is None:
                return output
            x = inputs[0]  # [batch, seq, in]
            add = sum(self.w[i] * s * ((x @ A.T) @ B.T) for i, (A, B, s) in parts)  # [batch, seq, out]
            return output + add

        return hook

    def weights(self, w: torch.Tensor):
        hooks = self

        class _Ctx:
            def __enter__(self):
                hooks.w = w

            def __exit__(self, *exc):
                hooks.w = None

        return _Ctx()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class DeltaObjective:
    def __init__(self, model, adapters: Mapping[str, Mapping], pad: int, batch: int = 16):
        self.names = list(adapters)
        self._model, self._pad, self._batch = model, pad, batch
        self._hooks = DeltaHooks(model, adapters)

    def close(self) -> None:
        """Take the hooks off the model (the engine keeps serving it)."""
        self._hooks.remove()

    def score(self, weights: torch.Tensor, examples: Sequence[FitExample]) -> tuple[torch.Tensor, torch.Tensor, int]:
        ce_sum, correct, n = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        for s in range(0, len(examples), self._batch):
            ids, mask, tg = _batch(examples[s : s + self._batch], self._pad)
            with self._hooks.weights(weights):
                lg = self._model(input_ids=ids, attention_mask=mask).logits  # [b, seq, vocab]
            ce, c, k = _scores(lg, tg)
            ce_sum, correct, n = ce_sum + ce, correct + c, n + k
        return ce_sum, correct, n


def make_objective(space: str, model, adapters: Mapping[str, Mapping], pad: int):
    for p in model.parameters():
        p.requires_grad_(False)
    if space == "logits":
        return LogitsObjective(model, adapters, pad)
    if space == "delta":
        return DeltaObjective(model, adapters, pad)
    raise RequestError(f"unknown space {space!r}; valid spaces: ['delta', 'logits']")


def evaluate(objective, weights: torch.Tensor, examples: Sequence[FitExample]) -> dict[str, float]:
    with torch.no_grad():
        ce, correct, n = objective.score(weights, examples)
    return {"loss": float(ce) / n, "token_accuracy": int(correct) / n}


def fit(
    objective,
    train: Sequence[FitExample],
    heldout: Sequence[FitExample],
    epochs: int = EPOCHS,
    lr: float = LR,
    patience: int = PATIENCE,
    progress: Progress | None = None,
) -> FitResult:
    """Adam on `theta` (weights = softmax(theta), starting uniform); the epoch with the best held-out loss wins."""
    names = objective.names
    theta = torch.zeros(len(names), requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    best = (math.inf, 0, torch.softmax(theta.detach(), 0))
    history = []
    for epoch in range(1, epochs + 1):
        opt.zero_grad()
        ce, correct, n = objective.score(torch.softmax(theta, 0), train)
        (ce / n).backward()
        opt.step()
        w = torch.softmax(theta.detach(), 0)
        held = evaluate(objective, w, heldout)
        row = {
            "epoch": epoch,
            "train_loss": float(ce.detach()) / n,
            "train_token_accuracy": int(correct) / n,
            "heldout_loss": held["loss"],
            "heldout_token_accuracy": held["token_accuracy"],
            "weights": {a: round(float(x), 4) for a, x in zip(names, w)},
        }
        history.append(row)
        if progress is not None:
            progress(row)
        if held["loss"] < best[0] - 1e-6:
            best = (held["loss"], epoch, w)
        elif epoch - best[1] >= patience:
            break
    return FitResult({a: float(x) for a, x in zip(names, best[2])}, best[1], history)


# ---- the whole job: fit, then measure every candidate through the engine ------------------------------
def blend_spec(weights: Mapping[str, float], space: str) -> dict:
    return {"mode": "blend", "weights": {a: round(float(w), 4) for a, w in weights.items()}, "space": space}


def _normalise(text: str, eos: str | None) -> str:
    return (text.replace(eos, "") if eos else text).strip()


def exact_match(engine, spec, rows: Sequence[Mapping[str, str]], examples: Sequence[FitExample]) -> float:
    """Greedy completions through the serving engine (the same path a request takes), compared as text, each
    given as many tokens as its expected completion; one that ends in EOS must stop there too."""
    from loraplex.experts.request import Request

    eos = engine.tokenizer.eos_token
    reqs = [
        Request.from_json(r["prompt"], spec, max_tokens=len(e.completion_ids), temperature=0.0)
        for r, e in zip(rows, examples)
    ]
    hits = 0
    for o, r, e in zip(engine.generate_many(reqs), rows, examples):
        if isinstance(o, Exception):
            continue
        stops = e.completion_ids[-1] in engine.eos_ids
        hits += _normalise(o.text, eos) == _normalise(r["completion"], eos) and (not stops or o.finish_reason == "stop")
    return hits / len(rows)


def run_fit(
    engine,
    adapters: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    space: str,
    heldout: float = HELDOUT,
    epochs: int = EPOCHS,
    lr: float = LR,
    patience: int = PATIENCE,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict:
    """Fit on `rows` with the engine's base model and adapters (both frozen), then compare on the held-out split:
    each adapter alone, the uniform blend and the fitted blend (teacher-forced loss, and exact match of greedy
    completions through the engine)."""
    model, tok = engine.wrapped.model, engine.tokenizer
    loaded = {a: engine.store.get(a).modules for a in adapters}
    train_rows, held_rows = split(list(rows), heldout, seed)
    train, held = encode_examples(tok, train_rows), encode_examples(tok, held_rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    objective = make_objective(space, model, loaded, pad)
    try:
        result = fit(objective, train, held, epochs, lr, patience, progress)
        candidates = {f"single:{a}": a for a in adapters}
        candidates["uniform"] = blend_spec({a: 1.0 / len(adapters) for a in adapters}, space)
        candidates["fitted"] = blend_spec(result.weights, space)
        table = []
        for label, spec in candidates.items():
            if isinstance(spec, str):
                w = torch.tensor([1.0 if a == spec else 0.0 for a in adapters])
            else:
                w = torch.tensor([spec["weights"][a] for a in adapters])
            table.append(
                {
                    "candidate": label,
                    "composition": spec,
                    **{f"heldout_{k}": round(v, 4) for k, v in evaluate(objective, w, held).items()},
                    "heldout_exact_match": round(exact_match(engine, spec, held_rows, held), 4),
                }
            )
    finally:
        objective.close()
    return {
        "adapters": list(adapters),
        "space": space,
        "examples": {"train": len(train), "heldout": len(held)},
        "weights": {a: round(w, 4) for a, w in result.weights.items()},
        "best_epoch": result.best_epoch,
        "history": result.history,
        "table": table,
    }
