"""Per-request adapter composition: what a request asks for, reduced to weight vectors over adapters.

Every mode except `chain` becomes one or more *weight rows* over adapter names that the batched layer
executes in the same forward as everyone else's rows:

- single `a`                      -> one row `{a: 1}`
- stack `[a, b]`                  -> one row `{a: 1, b: 1}` (sum of deltas in weight space)
- blend delta `{a: .7, b: .3}`    -> one row `{a: .7, b: .3}`
- blend logits `{a: .7, b: .3}`   -> three rows `{}`, `{a: 1}`, `{b: 1}` whose logits are mixed per step as
                                     `base + sum_i w_i (logits_i - base)` (the reference article's ensemble)
- moe top-k over router scores    -> one row with the top-k scores renormalised to sum 1
- chain                           -> one stage at a time, each stage any single adapter (or the base)
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loraplex.experts.errors import CompositionError

MODES = ("base", "single", "stack", "blend", "moe", "chain")
SPACES = ("delta", "logits")
CHAIN_FIELDS = ("input", "previous")
MAX_CHAIN_STAGES = 8


@dataclass(frozen=True)
class Base:
    """No adapter: the base model alone."""


@dataclass(frozen=True)
class Single:
    adapter: str


@dataclass(frozen=True)
class Stack:
    adapters: tuple[str, ...]


@dataclass(frozen=True)
class Blend:
    weights: tuple[tuple[str, float], ...]
    space: str = "delta"


@dataclass(frozen=True)
class Moe:
    top_k: int
    scores: tuple[tuple[str, float], ...]  # router probabilities over adapters

    def selected(self) -> tuple[tuple[str, float], ...]:
        """Top-k adapters by score, renormalised to sum 1 (ties broken by name for determinism)."""
        top = sorted(self.scores, key=lambda kv: (-kv[1], kv[0]))[: self.top_k]
        total = sum(w for _, w in top)
        return tuple((n, w / total) for n, w in top)


@dataclass(frozen=True)
class ChainStage:
    adapter: str | None
    prompt: str  # template with {input} and/or {previous}

    def render(self, input_text: str, previous: str) -> str:
        return self.prompt.format_map({"input": input_text, "previous": previous})


@dataclass(frozen=True)
class Chain:
    stages: tuple[ChainStage, ...]


Composition = Base | Single | Stack | Blend | Moe | Chain
WeightRow = dict[str, float]


def _expect_keys(obj: Mapping[str, Any], mode: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    allowed = {"mode", *required, *optional}
    extra = sorted(set(obj) - allowed)
    if extra:
        raise CompositionError(f"unknown field(s) {extra} for mode {mode!r}; allowed fields: {sorted(allowed)}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CompositionError(f"mode {mode!r} needs field(s) {missing}")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise CompositionError(f"{where} must be a non-empty adapter name, got {value!r}")
    return value


def _weights(value: Any, where: str) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, Mapping) or not value:
        raise CompositionError(f"{where} must be a non-empty object of adapter -> weight, got {value!r}")
    out = []
    for k, w in value.items():
        _name(k, f"{where} key")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise CompositionError(f"{where}[{k!r}] must be a finite number >= 0, got {w!r}")
        out.append((k, float(w)))
    if sum(w for _, w in out) <= 0:
        raise CompositionError(f"{where} must have at least one positive weight, got {dict(value)}")
    return tuple(out)


def _template(value: Any, where: str, stage: int) -> str:
    if not isinstance(value, str) or not value:
        raise CompositionError(f"{where} must be a non-empty template string, got {value!r}")
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
    except ValueError as e:
        raise CompositionError(
            f"{where} is not a valid template ({e}): {value!r}; escape literal braces as '{{{{' and '}}}}'"
        ) from None
    allowed = CHAIN_FIELDS if stage > 0 else ("input",)
    for f, spec, conv in fields:
        if f not in allowed or spec or conv:
            raise CompositionError(
                f"{where} uses placeholder {{{f}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}; valid "
                f"placeholders here: {['{' + a + '}' for a in allowed]}"
            )
    return value


def parse_composition(spec: Any) -> Composition:
    """Validate a JSON composition spec (or a bare adapter name, or None for the base model)."""
    if spec is None:
        return Base()
    if isinstance(spec, str):
        return Single(_name(spec, "adapter"))
    if not isinstance(spec, Mapping):
        raise CompositionError(f"composition must be an object, an adapter name or null, got {type(spec).__name__}")
    mode = spec.get("mode")
    if mode not in MODES:
        raise CompositionError(f"unknown composition mode {mode!r}; valid modes: {list(MODES)}")
    if mode == "base":
        _expect_keys(spec, mode, ())
        return Base()
    if mode == "single":
        _expect_keys(spec, mode, ("adapter",))
        return Single(_name(spec["adapter"], "adapter"))
    if mode == "stack":
        _expect_keys(spec, mode, ("adapters",))
        adapters = spec["adapters"]
        if not isinstance(adapters, list) or not adapters:
            raise CompositionError(f"stack 'adapters' must be a non-empty list of adapter names, got {adapters!r}")
        names = tuple(_name(a, "stack adapter") for a in adapters)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise CompositionError(
                f"stack lists adapter(s) {dup} more than once; use blend weights to scale one adapter"
            )
        return Stack(names)
    if mode == "blend":
        _expect_keys(spec, mode, ("weights",), ("space",))
        space = spec.get("space", "delta")
        if space not in SPACES:
            raise CompositionError(f"unknown blend space {space!r}; valid spaces: {list(SPACES)}")
        return Blend(_weights(spec["weights"], "blend weights"), space)
    if mode == "moe":
        _expect_keys(spec, mode, ("weights",), ("top_k",))
        top_k = spec.get("top_k", 1)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise CompositionError(f"moe top_k must be an integer >= 1, got {top_k!r}")
        return Moe(top_k, _weights(spec["weights"], "moe weights"))
    _expect_keys(spec, mode, ("stages",))
    stages = spec["stages"]
    if not isinstance(stages, list) or not stages or len(stages) > MAX_CHAIN_STAGES:
        raise CompositionError(f"chain 'stages' must be a list of 1..{MAX_CHAIN_STAGES} stages, got {stages!r}")
    parsed = []
    for i, st in enumerate(stages):
        if not isinstance(st, Mapping) or "prompt" not in st or set(st) - {"adapter", "prompt"}:
            raise CompositionError(
                f"chain stage {i} must be an object with 'prompt' and optional 'adapter', got {st!r}"
            )
        adapter = st.get("adapter")
        parsed.append(
            ChainStage(
                None if adapter is None else _name(adapter, f"chain stage {i} adapter"),
                _template(st["prompt"], f"chain stage {i} prompt", i),
            )
        )
    return Chain(tuple(parsed))


def adapters_of(comp: Composition) -> tuple[str, ...]:
    """Every adapter name a composition touches (for existence checks and slot planning)."""
    if isinstance(comp, Single):
        return (comp.adapter,)
    if isinstance(comp, Stack):
        return comp.adapters
    if isinstance(comp, Blend):
        return tuple(n for n, _ in comp.weights)
    if isinstance(comp, Moe):
        return tuple(n for n, _ in comp.selected())
    if isinstance(comp, Chain):
        return tuple(dict.fromkeys(s.adapter for s in comp.stages if s.adapter))
    return ()


def weight_rows(comp: Composition) -> tuple[list[WeightRow], list[float]]:
    """(rows, mix): the virtual batch rows a one-step composition needs and how to mix their logits.

    The request's logits are `sum_j mix[j] * logits(rows[j])`; every mode but logits-space blend has a
    single row with mix `[1.0]`.
    """
    if isinstance(comp, Base):
        return [{}], [1.0]
    if isinstance(comp, Single):
        return [{comp.adapter: 1.0}], [1.0]
    if isinstance(comp, Stack):
        return [{a: 1.0 for a in comp.adapters}], [1.0]
    if isinstance(comp, Moe):
        return [dict(comp.selected())], [1.0]
    if isinstance(comp, Blend):
        if comp.space == "delta":
            return [dict(comp.weights)], [1.0]
        # base + sum_i w_i (l_i - base) = (1 - sum_i w_i) base + sum_i w_i l_i
        active = [(n, w) for n, w in comp.weights if w > 0]
        rows = [{}] + [{n: 1.0} for n, _ in active]
        return rows, [1.0 - sum(w for _, w in active)] + [w for _, w in active]
    raise CompositionError("chain compositions run stage by stage; ask for the weight rows of a stage")
