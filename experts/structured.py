"""Structured output (`response_format` json_object / json_schema) on the native engine, through xgrammar: the
grammar library vLLM uses, so both engines constrain the same way. Output is compact JSON (no whitespace
between tokens), as the vLLM groups are configured by default (`vllm.compact_json`): with free whitespace a
small model can spend its whole budget on newlines inside an open object.

A `GrammarBook` belongs to one engine (its tokenizer and vocabulary); compiled grammars are cached per schema,
and each request row gets its own `Grammar` (matcher state). xgrammar is imported on first use.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

import torch

from loraplex.experts.errors import SamplingError

OBJECT_SCHEMA = '{"type": "object"}'
MAX_COMPILED = 64  # distinct schemas kept compiled per engine


class Grammar:
    """One row's matcher: masks the logits to the tokens the grammar allows next, advances on each token."""

    def __init__(self, matcher, vocab_size: int):
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # [1, ceil(vocab / 32)] int32

    def mask(self, row: torch.Tensor) -> None:
        """`row: [vocab]` float32: disallowed tokens become -inf (in place)."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        view = row[None, : self.vocab_size]
        if row.device.type == "cpu":
            self._xgr.apply_token_bitmask_inplace(view, self.bitmask)
        else:
            self._xgr.apply_token_bitmask_inplace(view, self.bitmask.to(row.device))
        row[self.vocab_size :] = float("-inf")  # padding rows of the embedding: never a token

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise RuntimeError(f"grammar refused token {token} that its own mask allowed")

    @property
    def terminated(self) -> bool:
        return self.matcher.is_terminated()


class GrammarBook:
    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        self.tokenizer, self.vocab_size, self.stop_ids = tokenizer, vocab_size, list(stop_ids)
        self._compiler = None
        self._compiled: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()  # `check` runs on request threads, `grammar` on the engine thread

    def _compile(self, structured: tuple[str, str]):
        import xgrammar as xgr

        with self._lock:
            if structured in self._compiled:
                self._compiled.move_to_end(structured)
                return self._compiled[structured]
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
            kind, schema = structured
            text = OBJECT_SCHEMA if kind == "json_object" else schema
            try:
                json.loads(text)
                compiled = self._compiler.compile_json_schema(text, any_whitespace=False, separators=(",", ":"))
            except (ValueError, RuntimeError) as e:  # invalid JSON, or a schema xgrammar cannot compile
                raise SamplingError(f"response_format: the JSON schema cannot be compiled: {e}") from None
            self._compiled[structured] = compiled
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)
            return compiled

    def check(self, structured: tuple[str, str]) -> None:
        """Compile now (a request thread), so a bad schema is the request's 400 and the engine step never waits."""
        self._compile(structured)

    def grammar(self, structured: tuple[str, str]) -> Grammar:
        import xgrammar as xgr

        return Grammar(xgr.GrammarMatcher(self._compile(structured)), self.vocab_size)
