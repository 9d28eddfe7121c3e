"""Read one PEFT LoRA adapter folder and check it against the base model, reporting every problem.

The format is PEFT's own (`adapter_config.json` + `adapter_model.safetensors`), so adapters trained
with `peft.get_peft_model(...).save_pretrained(dir)` load unchanged. Validation happens here, on the
host, before an adapter may take a device slot: a bad adapter never evicts a good one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraplex.experts.errors import AdapterValidationError

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"

# PEFT features that change the math beyond `scale * B(A x)`; refused rather than silently ignored.
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA magnitude vectors",
    "fan_in_fan_out": "Conv1D (fan_in_fan_out) layers",
    "lora_bias": "LoRA bias terms",
}
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>A|B)(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraAdapter:
    """An adapter in host memory: `{module name: (A [r, in], B [out, r], scale)}`."""

    name: str
    path: Path
    rank: int  # the largest rank over its modules
    modules: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]]
    config: Mapping[str, object]


def _pattern_value(patterns: Mapping[str, object], module: str, default: object) -> object:
    """PEFT's `rank_pattern`/`alpha_pattern` lookup: a key matches a module name suffix as a regex."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_adapter(
    name: str, path: Path, module_shapes: Mapping[str, tuple[int, int]], max_rank: int, allow_pickle: bool
) -> LoraAdapter:
    """Load and validate `path` as adapter `name`; raises `AdapterValidationError` listing all problems."""
    problems: list[str] = []
    config_path = path / CONFIG_FILE
    config: dict = {}
    if not config_path.is_file():
        problems.append(f"missing {CONFIG_FILE} in {path}")
    else:
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            problems.append(f"{CONFIG_FILE} is not valid JSON: {e}")
    if config:
        if config.get("peft_type", "LORA") != "LORA":
            problems.append(f"peft_type is {config.get('peft_type')!r}; only 'LORA' adapters are supported")
        for flag, what in _UNSUPPORTED_FLAGS.items():
            if config.get(flag):
                problems.append(f"{flag}=true ({what}) is not supported")
        if config.get("modules_to_save"):
            problems.append(
                f"modules_to_save={config['modules_to_save']} is not supported (adapters must only add LoRA deltas)"
            )

    state: dict[str, torch.Tensor] = {}
    st, pk = path / SAFETENSORS_FILE, path / PICKLE_FILE
    if st.is_file():
        try:
            state = load_file(str(st))
        except Exception as e:  # corrupt/truncated file: report, don't crash the replica
            problems.append(f"cannot read {SAFETENSORS_FILE}: {e}")
    elif pk.is_file():
        if not allow_pickle:
            problems.append(
                f"refusing pickle weights {PICKLE_FILE} (arbitrary code on load); convert to {SAFETENSORS_FILE} or "
                "set allow_pickle=true"
            )
        else:
            try:
                state = torch.load(pk, map_location="cpu", weights_only=True)
            except Exception as e:
                problems.append(f"cannot read {PICKLE_FILE}: {e}")
    else:
        problems.append(f"no weights: neither {SAFETENSORS_FILE} nor {PICKLE_FILE} in {path}")

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _KEY.match(key)
        if m is None:
            problems.append(f"unexpected tensor {key!r} (only lora_A/lora_B weights are supported)")
            continue
        pairs.setdefault(m["module"], {})[m["which"]] = tensor

    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    unknown = sorted(set(pairs) - set(module_shapes))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        kinds = sorted({n.rsplit(".", 1)[-1] for n in module_shapes})
        problems.append(
            f"target modules not in the base model's adapted layers: {shown}; adaptable layer kinds: {kinds}"
        )
    alpha = config.get("lora_alpha", 8)
    use_rslora = bool(config.get("use_rslora", False))
    for module in sorted(set(pairs) & set(module_shapes)):
        ab = pairs[module]
        if set(ab) != {"A", "B"}:
            problems.append(f"{module}: has lora_{''.join(sorted(ab))} but not both lora_A and lora_B")
            continue
        A, B = ab["A"], ab["B"]
        fan_in, fan_out = module_shapes[module]
        if A.dim() != 2 or B.dim() != 2:
            problems.append(f"{module}: lora_A/lora_B must be 2-D, got {tuple(A.shape)} and {tuple(B.shape)}")
            continue
        r = A.shape[0]
        if A.shape[1] != fan_in or B.shape != (fan_out, r):
            problems.append(
                f"{module}: shapes A{tuple(A.shape)} B{tuple(B.shape)} do not fit the base layer "
                f"(expected A(r, {fan_in}) B({fan_out}, r))"
            )
            continue
        if r > max_rank:
            problems.append(f"{module}: rank {r} exceeds max_rank {max_rank}")
            continue
        a = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha))
        scale = a / math.sqrt(r) if use_rslora else a / r
        modules[module] = (A.float().contiguous(), B.float().contiguous(), scale)
    if not problems and not modules:
        problems.append("adapter has no LoRA weights")
    if problems:
        raise AdapterValidationError(name, problems)
    return LoraAdapter(name, path, max(a.shape[0] for a, _, _ in modules.values()), modules, config)
