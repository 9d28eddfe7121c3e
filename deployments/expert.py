"""Expert group deployment: the base model plus a group of adapters, behind the engine protocol
(`experts.protocol.ServingEngine`). Requests of any adapters and compositions join one running batch
between decode steps (`experts.replica.NativeReplica`). Answers are typed values (`Result` or a
`LoraplexError`), which Ray pickles back to the ingress unchanged."""

from __future__ import annotations

import asyncio

from ray import serve

from loraplex.config.engine import EngineConfig, VllmOptions
from loraplex.deployments.metrics_board import Pusher
from loraplex.experts.protocol import GenerationPayload, Outcome, ServingEngine
from loraplex.experts.replica import NativeReplica
from loraplex.experts.request import Result
from loraplex.observability.metrics import ExpertMetrics


@serve.deployment
class ExpertDeployment:
    def __init__(
        self,
        group: str,
        engine_config: dict,
        pinned: list[str],
        max_batch_size: int,
        batch_wait_timeout_s: float,
        vllm: dict | None = None,
        board=None,
    ):
        config = EngineConfig(**engine_config)
        self.engine: ServingEngine
        if vllm is None:
            self.engine = NativeReplica(config, pinned, max_batch_size=max_batch_size, wait_s=batch_wait_timeout_s)
        else:
            from loraplex.experts.vllm_engine import VllmReplica  # vLLM is imported only by vLLM groups

            self.engine = VllmReplica(config, VllmOptions(**vllm), pinned)
        self.metrics = ExpertMetrics()
        # the board learns of this replica once it can serve: /health waits for it
        self.pusher = Pusher(board, "expert", group, self._collect) if board is not None else None

    def _collect(self) -> tuple[str, dict]:
        stats = self.engine.stats()
        self.metrics.observe_stats(stats)
        return self.metrics.render(), stats

    def __del__(self):
        if getattr(self, "pusher", None) is not None:
            self.pusher.stop()
        if hasattr(self, "engine"):  # vLLM: stop its EngineCore process, remove its composed adapters
            self.engine.close()

    def record_routing_stats(self) -> dict:
        """What this replica holds (device slots, host memory, loading), for the group's residency-aware request
        router (`deployments/request_router.py`); Serve calls it every `placement.stats_period_s`."""
        return self.engine.routing_stats()

    async def generate(self, payload: GenerationPayload) -> Outcome:
        fut = self.engine.submit(payload)
        try:
            out = await asyncio.wrap_future(fut)
            self._observe(payload, out)
            return out
        finally:
            self.engine.cancel(fut)  # caller gone (cancelled): the engine drops the row; a no-op once answered

    def _observe(self, payload: GenerationPayload, out: Outcome) -> None:
        if isinstance(out, Result):
            batch = self.engine.stats()["last_batch_size"]
            self.metrics.observe_result(serve.get_multiplexed_model_id() or None, out.timing, batch)

    async def generate_stream(self, payload: GenerationPayload):
        """Yields text deltas (str), then the final `Result` or typed error."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        fut = self.engine.submit(payload, on_token=lambda d: loop.call_soon_threadsafe(queue.put_nowait, d))
        task = asyncio.wrap_future(fut)
        try:
            while not (task.done() and queue.empty()):
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    # Everything queued since the last yield goes as one item: each item is a Serve streaming
                    # hop (replica -> ingress -> proxy) whose CPU the engine would otherwise lose under load.
                    parts = [getter.result()]
                    while not queue.empty():
                        parts.append(queue.get_nowait())
                    yield "".join(parts)
                else:
                    getter.cancel()
            out = task.result()
            self._observe(payload, out)
            yield out
        finally:
            self.engine.cancel(fut)  # client gone (generator closed/cancelled): the engine drops the row

    def record_autoscaling_stats(self) -> dict:
        """Replica load for the group's autoscaling policy (deployments/autoscaling.py)."""
        s = self.engine.stats()
        return {
            "inflight": float(s["inflight"]),
            "rows": float(s["last_batch_size"]),
            "tokens": float(s["tokens"]),
            "cache_misses": float(s["store_device_misses"]),
        }

    def stats(self) -> dict:
        return self.engine.stats()

    def check_health(self) -> None:
        self.engine.check_health()
