"""Our own forward for Llama-family models: packed tokens, a preallocated KV cache, one forward per step.

HF's forward wants a rectangular `[batch, seq]` input and its own cache object, so a continuous batch
needs one forward for the decoding rows and another for every joining prompt (each reading all weights
again), a 4-D mask rebuilt per step, and cache copies when rows join. Here one step is one forward over
*packed* tokens (`[tokens, hidden]`): one token per decoding row, then the chunks of prompts being
prefilled (chunked prefill, vLLM's scheme); every linear layer runs once over all of them. Each token
writes its key and value at `(row, position)` of the `KVCache`; attention then reads views of the cache:
one batched call for all decoding rows (masked by each row's length), one call per prefill chunk
(causal from the chunk's start). The weights and submodules are the HF model's own (its embedding,
norms, rotary embedding with any rope scaling, projections wrapped by `MultiLoraLinear`, MLP, head), so
the numbers match HF's forward (tests compare logits and greedy tokens).

Grouped-query attention without repeating keys: the `groups` query heads that share a KV head are laid
out as that head's query positions (`[rows, kv_heads, groups, head_dim]`), so attention runs on the
cache as stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loraplex.experts.kv_cache import KVCache

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

log = logging.getLogger(__name__)


def unsupported_reason(model: nn.Module, wrapped: list[str]) -> str | None:
    """Why our forward cannot run `model` (then HF's forward is used), or None when it can."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        return f"model_type {kind!r} is not one of {list(SUPPORTED_MODEL_TYPES)}"
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, a) for a in needed) or not hasattr(model, "lm_head"):
        return f"{type(model).__name__} does not have the Llama module layout (model.{needed}, lm_head)"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < getattr(cfg, "max_position_embeddings", 0):
        return f"sliding-window attention (sliding_window={window}) is not implemented in our forward"
    types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        return f"layer types {sorted(types)} (only full attention is implemented in our forward)"
    outside = [n for n in wrapped if not n.startswith("model.layers.")]
    if outside:
        return f"LoRA targets outside the decoder layers ({outside[:3]}) are not implemented in our forward"
    return None


@dataclass(frozen=True)
class Chunk:
    """Prompt tokens `[start, start + length)` of cache row `row`, at `offset` in the packed tokens."""

    row: int
    start: int
    length: int
    offset: int


@dataclass(frozen=True)
class StepBatch:
    """One step's packed tokens: first one per decoding row (`decode_rows`), then the prefill `chunks`."""

    ids: torch.Tensor  # [tokens] long
    positions: torch.Tensor  # [tokens] long
    rows: torch.Tensor  # [tokens] long: the cache row each token belongs to
    decode_rows: list[int]  # cache rows of the first len(decode_rows) tokens
    chunks: list[Chunk]
    logits_at: torch.Tensor  # [outputs] long: packed tokens whose next-token logits are wanted


def mlp_block(x: torch.Tensor, norm_w: torch.Tensor, eps: float, gate_w, up_w, down_w) -> torch.Tensor:
    """`x + MLP(RMSNorm(x))` of a Llama layer from its tensors (`[tokens, hidden]`), as HF computes it: the norm
    in float32, SiLU-gated MLP. Taking tensors, not modules, lets one compiled graph serve every layer."""
    h = x.float()
    h = norm_w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return x + F.linear(F.silu(F.linear(h, gate_w)) * F.linear(h, up_w), down_w)


def _compile_blocker(layers, cfg) -> str | None:
    """Why the MLP blocks cannot use the compiled `mlp_block` (LoRA on the MLP, biases, another activation)."""
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(cfg, 'hidden_act', None)!r} (the compiled block is SiLU-gated)"
    for layer in layers:
        mlp, norm = layer.mlp, layer.post_attention_layernorm
        projs = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if not all(type(p) is nn.Linear and p.bias is None for p in projs):
            return "MLP projections carry LoRA or biases (the compiled block runs plain bias-free linears)"
        if not hasattr(norm, "variance_epsilon") or getattr(norm, "weight", None) is None:
            return f"post-attention norm {type(norm).__name__} is not an RMSNorm"
    return None


class PackedForward:
    """The model's forward over a `StepBatch`, reading and writing a `KVCache` sized for `rows` rows.

    `compile=True` runs each layer's norm + MLP through `torch.compile` (one graph for every layer, dynamic
    in the token count); attention and the LoRA projections stay eager. If compilation is not possible or
    fails at run time, the forward runs eager and `compile_error` says why (also logged)."""

    def __init__(self, model: nn.Module, rows: int, compile: bool = False):
        cfg = model.config
        inner = model.model
        self.embed, self.layers, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.rotary, self.lm_head = inner.rotary_emb, model.lm_head
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.groups = self.heads // self.kv_heads
        attn = self.layers[0].self_attn
        self.scaling = float(getattr(attn, "scaling", self.head_dim**-0.5))
        self.qk_norm = hasattr(attn, "q_norm") and hasattr(attn, "k_norm")  # Qwen3
        weight = self.embed.weight
        self.device = weight.device
        self.cache = KVCache(len(self.layers), rows, self.kv_heads, self.head_dim, weight.dtype, weight.device)
        self.compile_error: str | None = None
        self._block = None
        if compile:
            self.compile_error = _compile_blocker(self.layers, cfg)
            if self.compile_error is None:
                self._block = torch.compile(mlp_block, dynamic=True)
            else:
                log.warning("compile: running eager: %s", self.compile_error)

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        """Next-token logits `[outputs, vocab]` at `batch.logits_at`; the batch's keys and values stay cached."""
        self.cache.ensure(int(batch.positions.max()) + 1)
        x = self.embed(batch.ids)  # [tokens, hidden]
        cos, sin = self.rotary(x, batch.positions)  # [tokens, head_dim]
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        masks = self._masks(batch)
        for i, layer in enumerate(self.layers):
            x = x + self._attention(i, layer.self_attn, layer.input_layernorm(x), cos, sin, batch, masks)
            x = self._mlp(layer, x)
        return self.lm_head(self.norm(x[batch.logits_at]))  # [outputs, vocab]

    def _mlp(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self._block is not None:
            mlp, norm = layer.mlp, layer.post_attention_layernorm
            try:
                return self._block(
                    x,
                    norm.weight,
                    norm.variance_epsilon,
                    mlp.gate_proj.weight,
                    mlp.up_proj.weight,
                    mlp.down_proj.weight,
                )
            except Exception as e:  # e.g. no C++ compiler for inductor on this host
                self._block, self.compile_error = None, f"{type(e).__name__}: {e}"[:500]
                log.warning("compile failed, running eager: %s", self.compile_error)
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _masks(self, b: StepBatch) -> _Masks:
        """Key masks shared by every layer: decoding rows see positions up to their own, chunks are causal."""
        decode = None
        span = length = 0
        dense = False
        if b.decode_rows:
            n = len(b.decode_rows)
            span = max(b.decode_rows) + 1
            dense = span == n and b.decode_rows == list(range(n))
            pos = b.positions[:n]
            length = int(pos.max()) + 1
            limit = torch.zeros(span, dtype=torch.long, device=self.device)  # rows in the span not decoding: key 0
            limit[b.rows[:n]] = pos
            decode = (torch.arange(length, device=self.device)[None, :] <= limit[:, None]).view(span, 1, 1, length)
        chunks = []
        for c in b.chunks:
            keys = torch.arange(c.start + c.length, device=self.device)
            queries = c.start + torch.arange(c.length, device=self.device)
            causal = keys[None, :] <= queries[:, None]  # [length, start + length]
            chunks.append(causal.repeat(self.groups, 1))  # query heads of a group follow each other
        return _Masks(decode, span, length, dense, chunks)

    def _attention(self, i: int, attn: nn.Module, h: torch.Tensor, cos, sin, b: StepBatch, m: _Masks) -> torch.Tensor:
        n, heads, kv, g, d = h.shape[0], self.heads, self.kv_heads, self.groups, self.head_dim
        q = attn.q_proj(h).view(n, heads, d)
        k = attn.k_proj(h).view(n, kv, d)
        v = attn.v_proj(h).view(n, kv, d)
        if self.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        K, V = self.cache.keys[i], self.cache.values[i]  # [rows, kv, length, d]
        K[b.rows, :, b.positions] = k
        V[b.rows, :, b.positions] = v
        out = torch.empty(n, heads, d, dtype=q.dtype, device=q.device)
        r = len(b.decode_rows)
        if r:
            qd = q[:r].view(r, kv, g, d)
            if not m.dense:
                full = qd.new_zeros(m.span, kv, g, d)
                full[b.rows[:r]] = qd
                qd = full
            o = F.scaled_dot_product_attention(
                qd, K[: m.span, :, : m.length], V[: m.span, :, : m.length], attn_mask=m.decode, scale=self.scaling
            )  # [span, kv, g, d]
            out[:r] = (o if m.dense else o[b.rows[:r]]).reshape(r, heads, d)
        for c, mask in zip(b.chunks, m.chunks):
            t, end = c.length, c.start + c.length
            qc = q[c.offset : c.offset + t].view(t, kv, g, d).permute(1, 2, 0, 3).reshape(1, kv, g * t, d)
            o = F.scaled_dot_product_attention(
                qc, K[c.row : c.row + 1, :, :end], V[c.row : c.row + 1, :, :end], attn_mask=mask, scale=self.scaling
            )  # [1, kv, g * t, d]
            out[c.offset : c.offset + t] = o.view(kv, g, t, d).permute(2, 0, 1, 3).reshape(t, heads, d)
        return attn.o_proj(out.view(n, heads * d))


@dataclass(frozen=True)
class _Masks:
    decode: torch.Tensor | None  # [span, 1, 1, length] bool
    span: int
    length: int
    dense: bool  # decoding rows are exactly cache rows 0..n-1 in order: no scatter of queries
    chunks: list[torch.Tensor]  # per chunk [groups * length, start + length] bool


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
