"""Linear layers whose weights are prepacked once for oneDNN on CPU (vLLM-CPU's `onednn_mm` scheme).

`F.linear` on CPU hands a plain row-major weight to the BLAS on every call, which re-blocks it for its
kernel each time; at decode-sized batches that re-layout is a large part of the call. oneDNN can take a
weight already in its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, the op inductor's
freezing pass uses) and skip that work. Measured on this project's 2-core Xeon (AMX, AVX512-BF16), torch
2.13, 2 threads, ms per call, `F.linear` / prepacked (batch hint 32):

| weight (in x out) | dtype | M=1 | M=8 | M=32 | M=128 | M=512 |
|---|---|---|---|---|---|---|
| 1024 x 2816 | float32 | 0.22 / 0.26 | 0.63 / 0.33 | 1.02 / 0.70 | 2.64 / 2.21 | 9.05 / 8.29 |
| 1024 x 32000 | float32 | 3.12 / 3.35 | 10.1 / 5.45 | 14.7 / 10.5 | 34.5 / 29.2 | 141 / 118 |
| 1024 x 2816 | bfloat16 | 0.24 / 0.14 | 0.21 / 0.13 | 0.26 / 0.15 | 0.57 / 0.35 | 1.36 / 1.23 |
| 1024 x 32000 | bfloat16 | 2.48 / 1.35 | 2.70 / 1.37 | 3.14 / 1.70 | 7.14 / 3.99 | 18.8 / 15.8 |

oneDNN's packed op has no backward, and code that differentiates through the model (the blend fitter,
`experts.blend_fit`) needs gradients with respect to the inputs, so every layer keeps its plain weight as
well: calls that need a gradient run `F.linear` on it, and so do float32 calls of one or two rows (a lone
request decoding, memory-bound), the one case where the plain weight is faster. The cost is a second copy
of these weights in host memory. Results equal `F.linear`'s up to float32 summation order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

BATCH_HINT = 32  # oneDNN picks its blocking for this many rows; measured best from 1 to 512 rows above
PLAIN_ROWS = 2  # float32: up to this many rows the plain weight is faster (see the table)


class PrepackedLinear(nn.Module):
    """`nn.Linear` with a second copy of its weight in oneDNN's blocked layout (`packed`); `weight` is the plain one."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        w = base.weight.detach()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, BATCH_HINT)  # opaque mkldnn tensor [out, in]
        self.bias = None if base.bias is None else base.bias.detach()
        self.plain_rows = PLAIN_ROWS if w.dtype == torch.float32 else 0
        self.weight = w  # the plain weight: gradients, and float32 calls of 1-2 rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.requires_grad and torch.is_grad_enabled()) or x.numel() <= self.plain_rows * self.in_features:
            return F.linear(x, self.weight, self.bias)  # the packed op has no backward
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, prepacked=oneDNN"


@dataclass
class PrepackReport:
    """What `prepack_linears` did: layers packed, and why nothing was (None when it ran)."""

    packed: list[str] = field(default_factory=list)
    skipped: str | None = None


def prepack_blocker(model: nn.Module) -> str | None:
    """Why the model's linears cannot be prepacked here (None when they can)."""
    weight = next(model.parameters(), None)
    if weight is None or weight.device.type != "cpu":
        return "not on CPU (prepacking is for oneDNN on CPU)"
    if weight.dtype not in (torch.float32, torch.bfloat16):
        return f"dtype {weight.dtype} (prepacking covers float32 and bfloat16)"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    return None


def prepack_linears(model: nn.Module, prefix: str = "model.layers.") -> PrepackReport:
    """Replace every plain `nn.Linear` under `prefix` (the decoder layers, the LoRA wrappers' base layers
    included) and the output head by a `PrepackedLinear`, in place. Packing is checked on the first layer
    against `F.linear`; if oneDNN refuses or disagrees, nothing is replaced and the report says why."""
    report = PrepackReport(skipped=prepack_blocker(model))
    if report.skipped:
        return report
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and (n.startswith(prefix) or n == "lm_head")]
    if not names:
        report.skipped = f"no nn.Linear under {prefix!r}"
        return report
    try:
        first = model.get_submodule(names[0])
        probe = PrepackedLinear(first)
        x = torch.randn(BATCH_HINT, first.in_features, dtype=first.weight.dtype)
        with torch.inference_mode():
            got, want = probe(x).float(), F.linear(x, first.weight, first.bias).float()
        tol = 1e-3 if first.weight.dtype == torch.float32 else 5e-2
        err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
        if err > tol:
            report.skipped = f"oneDNN's result differs from F.linear's by {err:.2e} (relative) on {names[0]}"
            return report
    except RuntimeError as e:  # e.g. a CPU or build oneDNN has no kernel for
        report.skipped = f"oneDNN prepacking failed: {type(e).__name__}: {e}"[:300]
        return report
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PrepackedLinear(getattr(parent, child)))
        report.packed.append(n)
    return report
