"""The engine: one base model, many adapters, mixed-composition batches in one decode loop.

Each request is checked on its own first (`Engine.check`), so one bad request fails alone; the rest
decode together. `Engine.generate_many` runs a fixed list of requests through the continuous-batching
`Scheduler`; replicas (`experts.replica`) drive a `Scheduler` themselves, request by request. The
scheduler sees the engine only through the public methods below (check, encode, lease, release,
new_decoder), so it does not import this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraplex.config.engine import EngineConfig
from loraplex.experts.adapters.sources import HubSource
from loraplex.experts.adapters.store import AdapterStore, Lease
from loraplex.experts.composition import Chain, adapters_of, weight_rows
from loraplex.experts.decoder import Decoder
from loraplex.experts.errors import CompositionError, LoraplexError, RequestError, SamplingError
from loraplex.experts.forward import unsupported_reason
from loraplex.experts.hf_decoder import HFDecoder
from loraplex.experts.lora.layers import WrappedModel, wrap_model
from loraplex.experts.prepacked import PrepackReport, prepack_linears
from loraplex.experts.prompt import encode_prompt
from loraplex.experts.request import Request, Result
from loraplex.experts.sampling import SamplingParams
from loraplex.experts.scheduler import Scheduler
from loraplex.experts.structured import GrammarBook

__all__ = ["Engine", "Request", "Result", "pick_device", "pick_dtype"]

log = logging.getLogger(__name__)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RequestError("device 'cuda' requested but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


class Engine:
    def __init__(self, model: torch.nn.Module, tokenizer, config: EngineConfig):
        self.config = config
        self.tokenizer = tokenizer
        model.eval()
        self.wrapped: WrappedModel = wrap_model(model, config.max_slots, config.max_rank, config.target_modules)
        self.store = AdapterStore(
            config.adapter_roots,
            self.wrapped.module_shapes,
            self.wrapped,
            config.max_rank,
            config.max_host_adapters,
            config.allow_pickle,
            HubSource(config.hub) if config.hub.enabled else None,
            config.loader_threads,
        )
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])  # the logits' width
        self.grammars = GrammarBook(tokenizer, self.vocab_size, sorted(self.eos_ids))
        self.forward_kind, why = "hf", "forward: hf in the engine config"
        if config.forward == "native":
            why = unsupported_reason(model, list(self.wrapped.layers))
            if why is None:
                self.forward_kind = "native"
            else:
                log.warning("native forward unavailable, using HF's forward: %s", why)
        self.forward_reason = why  # why the HF forward runs (None: ours does)
        self.prepack = self._prepack(model)

    def _prepack(self, model: torch.nn.Module) -> PrepackReport:
        """oneDNN-prepacked linears for our forward on CPU (`experts.prepacked`); the report says why not."""
        if self.forward_kind != "native":
            return PrepackReport(skipped="HF's forward runs (prepacking is for our forward)")
        if not self.config.cpu_prepack:
            return PrepackReport(skipped="cpu_prepack: false in the engine config")
        if self.config.compile:
            return PrepackReport(skipped="compile: true (the compiled MLP blocks read the plain weights)")
        report = prepack_linears(model)
        if report.skipped and next(model.parameters()).device.type == "cpu":
            log.warning("linears not prepacked: %s", report.skipped)
        elif report.packed:
            log.info("prepacked %d linears for oneDNN", len(report.packed))
        return report

    @classmethod
    def from_config(cls, config: EngineConfig) -> Engine:
        """Load the base model and tokenizer with the ordinary `from_pretrained(path)` calls."""
        device = pick_device(config.device)
        tokenizer = AutoTokenizer.from_pretrained(config.base_model)
        dtype = pick_dtype(config.dtype, device)
        model = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=dtype).to(device)
        return cls(model, tokenizer, config)

    def bind_threads(self) -> None:
        """Apply `config.threads` to the calling thread. torch's intra-op count is OpenMP's, which is per thread:
        set in the replica's main thread it would not reach the worker thread that runs the model, which under
        Ray then computes on OMP_NUM_THREADS = floor(num_cpus) threads (1 for a fractional num_cpus)."""
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)

    # ---- checks ----------------------------------------------------------------------------
    def check(self, request: Request) -> list[int]:
        """Raise the request's first problem (unknown adapter, prompt too long, a composition that can never
        fit this replica) without touching the model; returns the token ids of its (first) prompt."""
        for name in adapters_of(request.composition):
            self.store.check(name)
        params = request.params
        self.check_sampling(params)
        if isinstance(request.composition, Chain):
            if not isinstance(request.prompt, str):
                raise RequestError("chain compositions need a text prompt (stage templates are text), got token ids")
            params.check_chain()
            prompt: str | list[int] = request.composition.stages[0].render(request.prompt, "")
        else:
            prompt = request.prompt
            rows, _ = weight_rows(request.composition)
            need = len(rows) * params.copies
            if need > self.config.max_batch_rows:
                raise CompositionError(
                    f"composition needs {need} rows ({len(rows)} per choice x {params.copies} sampled choices); "
                    f"this replica's max_batch_rows is {self.config.max_batch_rows}"
                )
            used = len(adapters_of(request.composition))
            if used > self.config.max_slots:
                raise CompositionError(
                    f"composition uses {used} adapters; this replica has max_slots={self.config.max_slots} "
                    f"adapter slots, so at most {self.config.max_slots} adapters per request"
                )
        return self.encode(prompt, request.params.max_tokens)

    def check_sampling(self, params: SamplingParams) -> None:
        """What depends on this model: biased token ids inside its vocabulary, a response format that compiles."""
        for name, ids in (
            ("logit_bias", [t for t, _ in params.logit_bias]),
            ("stop_token_ids", params.stop_token_ids),
            ("allowed_token_ids", params.allowed_token_ids or ()),
        ):
            bad = [t for t in ids if t >= self.vocab_size]
            if bad:
                raise SamplingError(f"{name} token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        if params.structured is not None:
            self.grammars.check(params.structured)

    def encode(self, prompt: str | list[int], max_tokens: int) -> list[int]:
        """Token ids of a prompt, checked against the vocabulary and the model's context length."""
        return encode_prompt(self.tokenizer, prompt, max_tokens, self.max_positions)

    # ---- what the scheduler drives -----------------------------------------------------------
    @property
    def max_slots(self) -> int:
        return self.config.max_slots

    @property
    def max_batch_rows(self) -> int:
        return self.config.max_batch_rows

    def lease(self, adapters: Iterable[str]) -> Lease:
        return self.store.lease(adapters)

    def release(self, lease: Lease) -> None:
        self.store.release(lease)

    def new_decoder(self) -> Decoder | HFDecoder:
        if self.forward_kind == "native":
            return Decoder(
                self.wrapped,
                self.tokenizer,
                self.eos_ids,
                self.config.max_batch_rows,
                self.config.prefill_tokens,
                self.grammars,
                self.config.compile,
            )
        return HFDecoder(self.wrapped, self.tokenizer, self.eos_ids, self.pad_id, self.grammars)

    # ---- generation ------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[Result]:
        """All-or-nothing variant of `generate_many`: raises the first request error."""
        results = self.generate_many(requests)
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results  # type: ignore[return-value]

    def generate_many(self, requests: Sequence[Request]) -> list[Result | LoraplexError]:
        """Run `requests` to completion through the continuous-batching scheduler; one result or error each."""
        self.bind_threads()
        results: list[Result | LoraplexError | None] = [None] * len(requests)
        scheduler = Scheduler(self, max_requests=max(1, len(requests)))
        for i, req in enumerate(requests):
            scheduler.add(req, lambda res, i=i: results.__setitem__(i, res))
        while scheduler.busy:
            if not scheduler.runnable:
                scheduler.wait_for_loads()  # only requests whose adapters are loading: nothing to decode yet
            scheduler.step()
        return results  # type: ignore[return-value]

    def stats(self) -> dict:
        return {**self.store.stats.as_dict(), "resident": list(self.store.resident()), "cached": self.store.cached()}

    def close(self) -> None:
        self.store.close()
