"""The vLLM-backed engine: a replica that drives vLLM's async engine in-process behind `ServingEngine`.

vLLM serves one LoRA per request, so compositions are mapped onto what it can run, all exactly:

- `single`                    -> a LoRA request for the adapter's own folder
- `stack`, delta `blend`, `moe` -> one *composed* adapter (`experts.adapters.composed`: the `cat` of the
                                 parts, rank = sum of ranks), written once per canonical composition into
                                 this replica's cache folder and served as an ordinary LoRA request
- `chain`                     -> its stages one after another on this engine
- logits `blend`              -> refused here (a 400 naming the mode); the gateway sends it to a native group

Adapter lookup, confinement and validation stay ours: every adapter goes through the same
`AdapterStore` checks as on the native engine before vLLM ever sees its path. Prompts are tokenized
here with the same function as the native engine (`experts.prompt`) and handed to vLLM as token ids,
so both engines decode the same tokens.

vLLM's `AsyncLLM` runs on an event loop in a thread of its own (Serve's replica loop stays free); its
EngineCore runs in a child process, as in `vllm serve`. `submit` returns a concurrent `Future`, like
the native replica's, so the Serve shell (`deployments/expert.py`) drives both the same way.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from loraplex.config.engine import EngineConfig, VllmOptions
from loraplex.experts.adapters.composed import ComposedAdapter, ComposedAdapterCache, compose, write_peft
from loraplex.experts.adapters.sources import HubSource
from loraplex.experts.adapters.store import AdapterStore
from loraplex.experts.choices import TokenCallback
from loraplex.experts.composition import Base, Blend, Chain, Composition, Moe, Single, Stack, adapters_of
from loraplex.experts.engine import pick_device, pick_dtype
from loraplex.experts.errors import (
    AdapterValidationError,
    CompositionError,
    LoraplexError,
    RequestError,
    SamplingError,
    as_error,
)
from loraplex.experts.logprobs import TokenLogprob, token_texts
from loraplex.experts.lora.targets import target_linears
from loraplex.experts.prompt import encode_prompt
from loraplex.experts.protocol import GenerationPayload, Outcome, count_outcome
from loraplex.experts.request import Choice, Request, Result, Timing
from loraplex.experts.sampling import SamplingParams

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # vLLM engine start (model load, KV cache allocation, warm-up)


class _HostOnly:
    """The store's slot backend on a vLLM replica: vLLM owns the device slots, the store only validates and
    keeps adapters in host memory (their tensors are what composed adapters are built from)."""

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots

    def write_slot(self, slot: int, modules: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        raise RuntimeError("a vLLM replica has no loraplex device slots")


def module_shapes(base_model: str, patterns: list[str]) -> dict[str, tuple[int, int]]:
    """`{module: (in, out)}` of the LoRA targets, read from the model's config on the meta device (no weights:
    vLLM loads those)."""
    config = AutoConfig.from_pretrained(base_model)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {n: (m.in_features, m.out_features) for n, m in target_linears(model, patterns).items()}


def configure_vllm_env(options: VllmOptions, device: str) -> None:
    """vLLM reads these from the environment when its engine starts (its EngineCore process inherits them)."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"
    if options.cpu_kvcache_space_gb is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(options.cpu_kvcache_space_gb)
    if options.cpu_threads_bind is not None:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = options.cpu_threads_bind


def engine_args(config: EngineConfig, options: VllmOptions) -> dict[str, Any]:
    """`AsyncEngineArgs` keyword arguments of a group (plain data: unit tests check the mapping)."""
    dtype = options.dtype or config.dtype
    if dtype == "auto":  # the native engine's rule (float32 on CPU, bfloat16 on CUDA), not vLLM's (the config's)
        dtype = str(pick_dtype("auto", pick_device(config.device))).removeprefix("torch.")
    args: dict[str, Any] = {
        "model": config.base_model,
        "tokenizer": config.base_model,
        "dtype": dtype,
        "enable_lora": True,
        "max_loras": options.max_loras,
        "max_cpu_loras": options.max_cpu_loras,
        "max_lora_rank": options.max_lora_rank,
        "max_num_seqs": options.max_num_seqs,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enforce_eager": options.enforce_eager,
        "disable_log_stats": True,
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": options.compact_json},
    }
    if options.max_model_len is not None:
        args["max_model_len"] = options.max_model_len
    if options.max_num_batched_tokens is not None:
        args["max_num_batched_tokens"] = options.max_num_batched_tokens
    return {k: v for k, v in args.items() if v is not None}


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Our sampling fields as vLLM `SamplingParams` keyword arguments (same meaning: 0 = greedy / no top-k).
    Structured output is separate (`structured_outputs`), built where vLLM is imported."""
    return {
        "max_tokens": max(1, params.max_tokens),  # vLLM needs >= 1; a scoring-only request drops its one token
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "stop": list(params.stop) or None,
        "seed": params.seed,
        "ignore_eos": params.ignore_eos,
        "n": params.n,
        "logprobs": params.logprobs,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "repetition_penalty": params.repetition_penalty,
        "min_p": params.min_p,
        "min_tokens": params.min_tokens,
        "logit_bias": dict(params.logit_bias) or None,
        "prompt_logprobs": params.prompt_logprobs,
        "stop_token_ids": list(params.stop_token_ids) or None,
        "include_stop_str_in_output": params.include_stop_str,
        "skip_special_tokens": params.skip_special_tokens,
        "allowed_token_ids": list(params.allowed_token_ids) if params.allowed_token_ids is not None else None,
    }


def composed_weights(comp: Composition) -> dict[str, float] | None:
    """The delta-space weights a composition folds into one adapter, or None when it is not composed."""
    if isinstance(comp, Stack):
        return {a: 1.0 for a in comp.adapters}
    if isinstance(comp, Blend) and comp.space == "delta":
        return dict(comp.weights)
    if isinstance(comp, Moe):
        return dict(comp.selected())
    return None


def _entry(step: dict, token_id: int, k: int) -> TokenLogprob:
    """One position of vLLM's logprobs ({token id: Logprob}, the chosen token among them) as ours, top `k`."""
    chosen = step[token_id]
    top = sorted(step.values(), key=lambda lp: lp.rank or 0)[:k]
    return TokenLogprob(
        chosen.decoded_token or "", chosen.logprob, [(lp.decoded_token or "", lp.logprob) for lp in top]
    )


def vllm_request_id(request_id: str | None) -> str:
    """vLLM's id for one generate call: the client's request id (so vLLM's own log lines carry it), made unique
    per call (a chain's stages and a list of prompts each make one)."""
    suffix = uuid.uuid4().hex[:8] if request_id else uuid.uuid4().hex
    return f"{request_id}-{suffix}" if request_id else suffix


class _Output:
    """One choice being streamed out of vLLM (`RequestOutputKind.DELTA`: each update holds only new tokens)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = None
        self.finish_reason = "cancelled"  # until vLLM says it finished
        self.n_tokens = 0  # the usage count: EOS included, as the native engine counts it
        self.prompt_logprobs: list[TokenLogprob] | None = None
        self.first_token = ""  # the prompt's first token as text (vLLM gives it no entry)
        self.times: list[float] = []  # perf_counter when each token arrived here (a delta of k tokens: k times)

    def add_prompt(self, ro, k: int) -> None:
        """vLLM's prompt logprobs (first entry None) as ours, top `k` by rank."""
        if ro.prompt_logprobs is None or self.prompt_logprobs is not None:
            return
        out: list[TokenLogprob] = []
        for tid, step in zip(ro.prompt_token_ids, ro.prompt_logprobs):
            if step is None:
                out.append(TokenLogprob(self.first_token, None, None))
                continue
            out.append(_entry(step, tid, k))
        self.prompt_logprobs = out

    def add(self, c, logprobs: int | None) -> None:
        self.times += [time.perf_counter()] * len(c.token_ids)
        self.parts.append(c.text)
        self.token_ids += c.token_ids
        if logprobs is not None and c.logprobs is not None:
            self.logprobs = self.logprobs or []
            self.logprobs += [_entry(step, t, logprobs) for t, step in zip(c.token_ids, c.logprobs)]
        if c.finish_reason is not None:
            self.finish_reason = c.finish_reason if c.finish_reason in ("stop", "length") else "cancelled"

    def close(self, eos_ids: set[int], scoring_only: bool = False) -> None:
        """vLLM's ids end with the EOS token that stopped them; the native engine's (and OpenAI's) do not. A
        scoring-only request (max_tokens 0) ran one token vLLM insists on: dropped."""
        if scoring_only:
            self.parts, self.token_ids, self.finish_reason = [], [], "length"
            self.logprobs = [] if self.logprobs is not None else None
        self.n_tokens = len(self.token_ids)
        if self.finish_reason == "stop" and self.token_ids and self.token_ids[-1] in eos_ids:
            self.token_ids = self.token_ids[:-1]  # its logprob entry stays, as in OpenAI's and vLLM's answers

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def timing(self, arrival: float) -> Timing:
        """vLLM queues inside its engine without telling us: no queue time; TTFT and gaps as the replica saw them."""
        times = self.times
        gaps = [b - a for a, b in zip(times, times[1:])]
        return Timing(None, times[0] - arrival if times else None, time.perf_counter() - arrival, gaps)


class VllmReplica:
    """The `ServingEngine` of a vLLM group (see `experts.protocol`)."""

    def __init__(self, config: EngineConfig, options: VllmOptions, pinned: list[str]):
        from vllm import AsyncEngineArgs  # imported here: native-only installs never need vLLM
        from vllm.config import StructuredOutputsConfig

        self.config, self.options = config, options
        configure_vllm_env(options, config.device)
        self.tokenizer = AutoTokenizer.from_pretrained(config.base_model)
        model_config = AutoConfig.from_pretrained(config.base_model)
        model_len = getattr(model_config, "max_position_embeddings", 1 << 30)
        try:  # the native engine's EOS rule: the generation config's, else the tokenizer's
            eos = GenerationConfig.from_pretrained(config.base_model).eos_token_id
        except OSError:
            eos = None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.max_positions = min(options.max_model_len or model_len, model_len)
        self.store = AdapterStore(
            config.adapter_roots,
            module_shapes(config.base_model, config.target_modules),
            _HostOnly(options.max_loras),
            min(config.max_rank, options.max_lora_rank),
            options.max_cpu_loras,
            config.allow_pickle,
            HubSource(config.hub) if config.hub.enabled else None,
            config.loader_threads,
        )
        base_dir = Path(options.composed_cache_dir or tempfile.gettempdir())
        self.composed = ComposedAdapterCache(
            base_dir / f"loraplex-composed-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            options.composed_cache_count,
            int(options.composed_cache_mb * 2**20),
            config.base_model,
            on_evict=lambda key: self._forget(("composed", key)),  # vLLM drops its copy too
        )
        self._ids = itertools.count(1)
        self._lora_ids: dict[tuple, int] = {}  # ("adapter", name, version) | ("composed", key) -> vLLM LoRA id
        self._lock = threading.Lock()  # counters, id maps, tasks
        self._tasks: dict[int, asyncio.Task] = {}  # id(future) -> its task on the vLLM loop
        self.counters = {"requests": 0, "errors": 0, "cancelled": 0, "tokens": 0, "lora_loads": 0}
        self.inflight = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loraplex-vllm", daemon=True)
        self._thread.start()
        t0 = time.perf_counter()
        kwargs = engine_args(config, options)
        log.info("starting vLLM: %s", kwargs)
        kwargs["structured_outputs_config"] = StructuredOutputsConfig(**kwargs["structured_outputs_config"])
        self.llm = self._run(self._start(AsyncEngineArgs(**kwargs)), START_TIMEOUT_S)
        log.info("vLLM engine ready in %.1f s", time.perf_counter() - t0)
        self._base_lora = self._run(self._zero_lora(), START_TIMEOUT_S) if self._cpu_lora_bug() else None
        for name in pinned:  # validate + load at start: a broken adapter fails the deploy, loudly
            self._run(self._lora_request(Single(name)), START_TIMEOUT_S)

    @staticmethod
    def _cpu_lora_bug() -> bool:
        """vLLM's CPU LoRA ops gather the adapter at index -1 for rows without one (vllm-project/vllm#48421, open
        in 0.32): in a batch with LoRA rows, a base-model row gets the last slot's adapter applied."""
        from vllm.platforms import current_platform

        return current_platform.is_cpu()

    async def _zero_lora(self):
        """A rank-1 all-zero adapter for base-model requests on CPU (the #48421 workaround): exact base outputs,
        at the cost of one LoRA slot in batches that mix base and adapter rows."""
        from vllm.lora.request import LoRARequest

        module, (fan_in, fan_out) = next(iter(self.store.module_shapes.items()))
        zero = ComposedAdapter("base-zero", 1, {module: (torch.zeros(1, fan_in), torch.zeros(fan_out, 1))}, ())
        folder = write_peft(zero, self.composed.root / ".base-zero", self.config.base_model)
        request = LoRARequest("loraplex-base", next(self._ids), str(folder))
        await self._add_lora(request, "loraplex-base")
        return request

    async def _start(self, args):
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)  # inside the loop: its output handler starts on this loop

    def _run(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- requests ----------------------------------------------------------------------------
    def submit(self, payload: GenerationPayload, on_token: TokenCallback | None = None) -> Future[Outcome]:
        fut: Future = Future()
        with self._lock:
            self.inflight += 1
        try:
            req = Request.from_json(
                payload["prompt"],
                payload.get("composition"),
                on_token=on_token,
                request_id=payload.get("request_id"),
                **payload.get("sampling", {}),
            )
        except LoraplexError as e:
            self._answer(fut, e)
            return fut
        except (TypeError, KeyError) as e:
            self._answer(fut, RequestError(f"invalid generation payload: {e}"))
            return fut

        def start() -> None:
            task = self._loop.create_task(self._serve(req))
            with self._lock:
                self._tasks[id(fut)] = task
            task.add_done_callback(lambda t: self._finish(fut, t))

        self._loop.call_soon_threadsafe(start)
        return fut

    def cancel(self, future: Future) -> None:
        """Cancel the request's task: vLLM's `generate` aborts the request in its engine when cancelled."""
        with self._lock:
            task = self._tasks.get(id(future))
        if task is not None:
            self._loop.call_soon_threadsafe(task.cancel)

    def _finish(self, fut: Future, task: asyncio.Task) -> None:
        with self._lock:
            self._tasks.pop(id(fut), None)
        if task.cancelled():
            res: Outcome = Result("", "cancelled", 0, 0)
        elif task.exception() is not None:
            res = as_error(task.exception())
        else:
            res = task.result()
        self._answer(fut, res)

    def _answer(self, fut: Future, res: Outcome) -> None:
        with self._lock:
            self.inflight -= 1
            count_outcome(self.counters, res)
        if not fut.done():
            fut.set_result(res)

    # ---- one request -----------------------------------------------------------------------------
    async def _serve(self, req: Request) -> Result:
        comp = req.composition
        for name in adapters_of(comp):  # unknown or unsafe names fail before any work
            self.store.check(name)
        if not isinstance(comp, Chain):
            ids = encode_prompt(self.tokenizer, req.prompt, req.params.max_tokens, self.max_positions)
            choices = await self._generate(comp, ids, req.params, req.on_token, req.request_id)
            first = choices[0]
            more = [Choice(o.text, o.finish_reason, o.token_ids, o.logprobs) for o in choices[1:]]
            completion = sum(c.n_tokens for c in choices)
            return Result(
                first.text,
                first.finish_reason,
                len(ids),
                completion,
                [],
                first.token_ids,
                first.logprobs,
                more,
                first.prompt_logprobs,
                first.timing(req.arrival),
            )
        req.params.check_chain()
        if not isinstance(req.prompt, str):
            raise RequestError("chain compositions need a text prompt (stage templates are text), got token ids")
        texts: list[str] = []
        prompt_tokens = completion_tokens = 0
        for i, stage in enumerate(comp.stages):
            last = i == len(comp.stages) - 1
            ids = encode_prompt(
                self.tokenizer,
                stage.render(req.prompt, texts[-1] if texts else ""),
                req.params.max_tokens,
                self.max_positions,
            )
            stage_comp = Single(stage.adapter) if stage.adapter else Base()
            params = req.params if last else req.params.feeding_stage()
            (out,) = await self._generate(stage_comp, ids, params, req.on_token if last else None, req.request_id)
            texts.append(out.text)
            prompt_tokens += len(ids)
            completion_tokens += out.n_tokens
            if out.finish_reason == "cancelled":
                break
        stages = texts if len(texts) > 1 else []
        return Result(
            texts[-1],
            out.finish_reason,
            prompt_tokens,
            completion_tokens,
            stages,
            out.token_ids,
            out.logprobs,
            timing=out.timing(req.arrival),
        )

    async def _generate(
        self,
        comp: Composition,
        ids: list[int],
        params: SamplingParams,
        on_token: TokenCallback | None,
        request_id: str | None = None,
    ) -> list[_Output]:
        """The request's `n` outputs; `on_token` streams choice 0 (streaming with n > 1 is refused upstream)."""
        from vllm import SamplingParams as VllmSampling
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        lora, lease = await self._lora_request(comp)
        try:
            structured = None
            if params.structured is not None:
                kind, schema = params.structured
                structured = (
                    StructuredOutputsParams(json_object=True)
                    if kind == "json_object"
                    else StructuredOutputsParams(json=schema)
                )
            kwargs = sampling_kwargs(params)
            copies = 1
            if params.greedy and params.n > 1:  # vLLM refuses greedy n > 1; the n answers are one answer n times
                kwargs["n"], copies = 1, params.n
            try:
                sp = VllmSampling(**kwargs, structured_outputs=structured, output_kind=RequestOutputKind.DELTA)
            except (ValueError, VLLMClientError) as e:  # vLLM's own checks (a schema it cannot compile...): a 400
                raise SamplingError(f"vLLM refused the sampling parameters: {e}") from None
            outs = [_Output() for _ in range(kwargs["n"])]
            scoring_only = params.max_tokens == 0
            if params.prompt_logprobs is not None:
                outs[0].first_token = token_texts(self.tokenizer, ids[:1])[0]
            try:
                async for ro in self.llm.generate(
                    TokensPrompt(prompt_token_ids=ids), sp, vllm_request_id(request_id), lora_request=lora
                ):
                    if params.prompt_logprobs is not None:
                        outs[0].add_prompt(ro, params.prompt_logprobs)
                    for c in ro.outputs:
                        if scoring_only:
                            continue
                        o = outs[c.index]
                        o.add(c, params.logprobs)
                        if c.index == 0 and c.token_ids and on_token is not None:
                            on_token(c.text)  # empty text too: one chunk per step, as vLLM's server streams
            except VLLMClientError as e:  # vLLM's request checks (its 4xx class): a 400 here too, not a 500
                raise SamplingError(f"vLLM refused the request: {e}") from None
            for o in outs:
                o.close(self.eos_ids, scoring_only)
            return [copy.deepcopy(outs[0]) for _ in range(copies)] if copies > 1 else outs
        finally:
            if lease is not None:
                self.composed.release(lease)

    async def _lora_request(self, comp: Composition):
        """(LoRARequest or None for the base model, the composed-cache lease to release after the request)."""
        from vllm.lora.request import LoRARequest

        if isinstance(comp, Base):
            return self._base_lora, None
        if isinstance(comp, Single):
            version, adapter = await asyncio.to_thread(self.store.get_versioned, comp.adapter)
            lora_id, new = self._lora_id(("adapter", comp.adapter, version), stale=("adapter", comp.adapter))
            request = LoRARequest(comp.adapter, lora_id, str(adapter.path))
            if new:
                await self._add_lora(request, comp.adapter)
            return request, None
        if isinstance(comp, Blend) and comp.space == "logits":
            raise CompositionError(
                "logits-space blends need a native-engine group (they mix the logits of one forward per adapter, "
                "which vLLM cannot run); use space 'delta' on this group"
            )
        weights = composed_weights(comp)
        if weights is None:
            raise CompositionError(f"composition {type(comp).__name__} cannot run as one vLLM request")
        key, folder = await asyncio.to_thread(self._composed_folder, weights)
        try:
            lora_id, new = self._lora_id(("composed", key))
            request = LoRARequest(key, lora_id, str(folder))
            if new:
                await self._add_lora(request, key)
        except BaseException:
            self.composed.release(key)
            raise
        return request, key

    def _composed_folder(self, weights: dict[str, float]) -> tuple[str, Path]:
        """The leased folder of a composed adapter; keyed on its parts' versions on disk, so a re-registered part
        gives a new folder (and a new vLLM id) while requests in flight keep the old one."""
        versioned = {n: self.store.get_versioned(n) for n in weights if weights[n]}
        adapters = {n: a for n, (_, a) in versioned.items()}
        tag = repr(sorted((n, v) for n, (v, _) in versioned.items()))
        return self.composed.get(weights, lambda: compose(adapters, weights, self.options.max_lora_rank), tag)

    def _lora_id(self, key: tuple, stale: tuple | None = None) -> tuple[int, bool]:
        """vLLM's integer id for one version of an adapter (new versions get new ids: vLLM caches by id)."""
        with self._lock:
            if key in self._lora_ids:
                return self._lora_ids[key], False
            if stale is not None:  # older versions of the same adapter: vLLM may drop them
                for old in [k for k in self._lora_ids if k[:2] == stale and k != key]:
                    self._schedule_remove(self._lora_ids.pop(old))
            self._lora_ids[key] = next(self._ids)
            self.counters["lora_loads"] += 1
            return self._lora_ids[key], True

    async def _add_lora(self, request, name: str) -> None:
        """Load now, not when the request is scheduled: a bad adapter fails this request with its reason."""
        try:
            await self.llm.add_lora(request)
        except Exception as e:
            for key in [k for k, v in self._lora_ids.items() if v == request.lora_int_id]:
                self._forget(key)
            raise AdapterValidationError(name, [f"vLLM could not load it: {e}"]) from e

    def _forget(self, key: tuple) -> None:
        with self._lock:
            lora_id = self._lora_ids.pop(key, None)
        if lora_id is not None:
            self._schedule_remove(lora_id)

    def _schedule_remove(self, lora_id: int) -> None:
        asyncio.run_coroutine_threadsafe(self.llm.remove_lora(lora_id), self._loop)

    # ---- introspection ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
            loras = [k[1] for k in self._lora_ids]
        unfinished = self.llm.get_num_unfinished_requests()
        return {
            **counters,
            "inflight": self.inflight,
            "pending": max(0, self.inflight - unfinished),
            "last_batch_size": unfinished,
            **{f"store_{k}": v for k, v in self.store.stats.as_dict().items()},
            "composed_hits": self.composed.hits,
            "composed_misses": self.composed.misses,
            "composed_evictions": self.composed.evictions,
            "composed_cached": len(self.composed),
            "resident": loras,
        }

    def warm(self, adapter: str) -> None:
        self.store.get(adapter)

    def routing_stats(self) -> dict[str, list[str]]:
        """vLLM owns its device slots; the store's host tier is what this replica can serve without a disk read."""
        return {"device": [], "host": self.store.cached(), "loading": self.store.loading()}

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the vLLM event-loop thread is not running")
        self._run(self.llm.check_health(), 30.0)

    def close(self) -> None:
        """Stop vLLM (its EngineCore process) and remove the composed-adapter folder."""
        try:
            self.llm.shutdown()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            shutil.rmtree(self.composed.root, ignore_errors=True)
            self.store.close()
