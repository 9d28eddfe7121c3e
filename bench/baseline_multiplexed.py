"""Baseline for `scripts/bench_serving.py`: multi-LoRA serving the way a Ray user writes it today.

One Serve deployment with a FastAPI ingress, `@serve.multiplexed` keyed by adapter name (LRU over
`max_num_models_per_replica` adapters loaded into one `PeftModel` with `load_adapter`, evicted with
`delete_adapter`), and ONE request at a time through `set_adapter` + `generate` (greedy). No cross-request
batching: a PEFT model has one active adapter, so requests for different adapters cannot share a forward.

Routing is Serve's own: clients send the adapter as the `serve_multiplexed_model_id` header (Ray 2.60's
HTTP proxy reads it, `-` or `_` spelling, and routes to a replica holding that model; see
`ray/serve/_private/proxy.py`). Requests without the header fall back to the body's `model`, so the body
is the same OpenAI-style `{"model", "prompt", "max_tokens", "ignore_eos"}` that loraplex takes.

    from loraplex.bench.baseline_multiplexed import build_baseline
    app = build_baseline({"base_model": ..., "adapter_roots": [...], "max_models": 32})
    serve.run(app, name="baseline", route_prefix="/baseline")
    # POST /baseline/v1/completions  -H 'serve_multiplexed_model_id: a3'
    #      -d '{"temperature": 0, "model": "a3", "prompt": [5, 6], "max_tokens": 16}'
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` annotation through @serve.ingress.
import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

app = FastAPI(title="multiplexed PEFT baseline")

PLACEHOLDER = "__placeholder__"  # a PeftModel always needs one adapter; this one is never activated for requests


def _find_adapter(roots: list[Path], name: str) -> Path | None:
    """The folder of adapter `name` under one of `roots` (no absolute paths, no '..')."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    for root in roots:
        path = root.joinpath(*parts)
        if (path / "adapter_config.json").is_file() and path.resolve().is_relative_to(root):
            return path
    return None


def _first_adapter_targets(roots: list[Path]) -> list[str]:
    for root in roots:
        for cfg in sorted(root.rglob("adapter_config.json")):
            targets = json.loads(cfg.read_text()).get("target_modules")
            if isinstance(targets, list) and targets:
                return sorted(targets)
    return ["q_proj", "v_proj"]


class _LoadedAdapter:
    """What the multiplexed loader returns; Serve calls `__del__` on LRU eviction (then GC calls it again)."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self._deleted = owner, name, False

    def __del__(self):
        if not self._deleted:
            self._deleted = True
            self.owner._unload(self.name)


@serve.deployment
@serve.ingress(app)
class MultiplexedPeftBaseline:
    def __init__(
        self,
        base_model: str,
        adapter_roots: list[str],
        max_models: int = 32,
        dtype: str = "float32",
        torch_threads: int | None = None,
    ):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.torch = torch
        self.roots = [Path(r).resolve() for r in adapter_roots]
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        base = AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, dtype)).eval()
        # Placeholder adapter on the same layers the real adapters target (so the wrapped layers are the same);
        # default init has lora_B = 0: a no-op even if it were active.
        self.model = get_peft_model(
            base,
            LoraConfig(r=1, target_modules=_first_adapter_targets(self.roots), task_type="CAUSAL_LM"),
            adapter_name=PLACEHOLDER,
        ).eval()
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        )
        self.model_lock = threading.Lock()  # model state (load/delete/set_adapter/generate) across worker threads
        self.turn = asyncio.Lock()  # one request at a time, FIFO, without parking executor threads on model_lock
        self.counters = {"requests": 0, "errors": 0, "tokens": 0, "loads": 0, "unloads": 0, "reloads": 0, "busy_s": 0.0}

        # Configurable LRU size: `serve.multiplexed` applied at init time (Serve 2.60 detects multiplexing on
        # instance attributes too). A closure, not a bound method: the wrapper caches its state on the function.
        async def load_adapter_by_model_id(model_id: str) -> _LoadedAdapter:
            path = _find_adapter(self.roots, model_id)
            if path is None:
                raise LookupError(f"unknown adapter {model_id!r}")
            await asyncio.to_thread(self._load, model_id, path)
            return _LoadedAdapter(self, model_id)

        self.get_adapter = serve.multiplexed(max_num_models_per_replica=max_models)(load_adapter_by_model_id)

    # ---- adapter residency (worker threads) ------------------------------------------------------------
    def _load(self, name: str, path: Path) -> None:
        with self.model_lock:
            if name not in self.model.peft_config:
                self.model.load_adapter(str(path), adapter_name=name)
                self.model.eval()
                self.counters["loads"] += 1

    def _unload(self, name: str) -> None:
        with self.model_lock:
            if name in self.model.peft_config:
                self.model.set_adapter(PLACEHOLDER)
                self.model.delete_adapter(name)
                self.counters["unloads"] += 1

    def _generate(self, name: str, prompt_ids: list[int], max_tokens: int, ignore_eos: bool) -> dict:
        torch = self.torch
        with self.model_lock:
            if name not in self.model.peft_config:  # evicted between the multiplexed lookup and our turn
                self.model.load_adapter(str(_find_adapter(self.roots, name)), adapter_name=name)
                self.model.eval()
                self.counters["reloads"] += 1
            self.model.set_adapter(name)
            ids = torch.tensor([prompt_ids])
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_tokens,
                    min_new_tokens=max_tokens if ignore_eos else None,
                    do_sample=False,
                    pad_token_id=self.pad_id,
                )
        new = out[0, ids.shape[1] :].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "stop" if (eos is not None and new and new[-1] == eos and len(new) < max_tokens) else "length"
        return {
            "text": self.tokenizer.decode(new, skip_special_tokens=True),
            "finish_reason": finish,
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(new),
        }

    # ---- HTTP ------------------------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, message: str) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error" if status < 500 else "internal_error",
                    "code": status,
                }
            },
            status_code=status,
        )

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as e:
            return self._error(400, f"body is not valid JSON: {e}")
        header_id = serve.get_multiplexed_model_id()
        model = header_id or body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(400, "no adapter: send the serve_multiplexed_model_id header or a body 'model'")
        if header_id and body.get("model") not in (None, header_id):
            return self._error(400, f"header model id {header_id!r} != body model {body.get('model')!r}")
        max_tokens = body.get("max_tokens", 16)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt_ids = self.tokenizer(prompt)["input_ids"]
        elif (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and 0 <= t < len(self.tokenizer) for t in prompt)
        ):
            prompt_ids = prompt
        else:
            return self._error(400, "prompt must be text or a non-empty list of token ids")
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
            return self._error(400, "max_tokens must be an integer in [1, 4096]")
        try:
            await self.get_adapter(model)
        except LookupError as e:
            return self._error(404, str(e))
        try:
            async with self.turn:
                t0 = time.perf_counter()
                try:
                    result = await asyncio.to_thread(
                        self._generate, model, prompt_ids, max_tokens, bool(body.get("ignore_eos", False))
                    )
                finally:
                    self.counters["busy_s"] += time.perf_counter() - t0
        except Exception as e:
            self.counters["errors"] += 1
            return self._error(500, f"{type(e).__name__}: {e}")
        self.counters["requests"] += 1
        self.counters["tokens"] += result["completion_tokens"]
        usage = {
            "prompt_tokens": result["prompt_tokens"],
            "completion_tokens": result["completion_tokens"],
            "total_tokens": result["prompt_tokens"] + result["completion_tokens"],
        }
        return JSONResponse(
            {
                "id": f"cmpl-{uuid.uuid4().hex[:24]}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "text": result["text"], "finish_reason": result["finish_reason"], "logprobs": None}
                ],
                "usage": usage,
            }
        )

    @app.get("/v1/stats")
    async def stats(self):
        with self.model_lock:
            loaded = [n for n in self.model.peft_config if n != PLACEHOLDER]
        return {**self.counters, "loaded": loaded, "torch_threads": self.torch.get_num_threads()}

    @app.get("/health")
    async def health(self):
        return {"status": "ok"}


def build_baseline(args: dict):
    """App builder: args = {base_model, adapter_roots, max_models?, dtype?, torch_threads?, num_cpus?,
    max_ongoing_requests?, max_queued_requests?}."""
    a = dict(args)
    opts = {
        "ray_actor_options": {"num_cpus": float(a.pop("num_cpus", 1.0))},
        "max_ongoing_requests": int(a.pop("max_ongoing_requests", 64)),
        "max_queued_requests": int(a.pop("max_queued_requests", 256)),
        "num_replicas": int(a.pop("num_replicas", 1)),
    }
    return MultiplexedPeftBaseline.options(**opts).bind(**a)
