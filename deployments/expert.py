"""Expert group deployment: the base model plus a group of adapters. Requests of any adapters and compositions
join one running batch between decode steps (continuous batching, `loraplex.experts.replica.ExpertServer`)."""

from __future__ import annotations

import asyncio
import threading

from ray import serve

from loraplex.config.engine import EngineConfig
from loraplex.deployments.metrics import ExpertMetrics
from loraplex.experts.replica import ExpertServer, error_payload

MAX_MULTIPLEXED = 64  # adapters a replica advertises to the router for affinity (host-tier loads)


@serve.deployment
class ExpertDeployment:
    def __init__(self, engine_config: dict, pinned: list[str], max_batch_size: int, batch_wait_timeout_s: float):
        self.server = ExpertServer(EngineConfig(**engine_config), pinned, max_batch_size=max_batch_size, wait_s=batch_wait_timeout_s)
        self.metrics = ExpertMetrics()

    @serve.multiplexed(max_num_models_per_replica=MAX_MULTIPLEXED)
    async def _affinity(self, adapter: str):
        # Multiplexing here is only the affinity signal: Serve prefers replicas whose loaded ids include the
        # request's adapter. Weights live in the engine's own two-tier store.
        return await asyncio.to_thread(self.server.warm, adapter)

    async def _warm_for_request(self) -> dict | None:
        adapter = serve.get_multiplexed_model_id()
        if adapter:
            try:
                await self._affinity(adapter)
            except Exception as e:  # unknown/invalid adapter: answer as data, the engine re-checks anyway
                return error_payload(e)
        return None

    async def generate(self, payload: dict) -> dict:
        err = await self._warm_for_request()
        if err:
            return err
        cancel = threading.Event()
        try:
            return await asyncio.wrap_future(self.server.submit({**payload, "cancel": cancel}))
        finally:
            cancel.set()  # caller gone (cancelled): the engine drops the row at its next step; a no-op once answered
            self.metrics.observe(self.server.stats())

    async def generate_stream(self, payload: dict):
        """Yields text deltas (str), then the final result dict."""
        err = await self._warm_for_request()
        if err:
            yield err
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        task = asyncio.wrap_future(self.server.submit({**payload, "cancel": cancel, "on_token": lambda d: loop.call_soon_threadsafe(queue.put_nowait, d)}))
        try:
            while not (task.done() and queue.empty()):
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
            yield task.result()
        finally:
            cancel.set()  # client gone (generator closed/cancelled): the engine drops the row at its next step
            self.metrics.observe(self.server.stats())

    def record_autoscaling_stats(self) -> dict:
        """Replica load for the group's autoscaling policy (deployments/autoscaling.py)."""
        s = self.server.stats()
        return {"inflight": float(s["inflight"]), "rows": float(s["last_batch_size"]), "tokens": float(s["tokens"]),
                "cache_misses": float(s["store_device_misses"])}

    def stats(self) -> dict:
        return self.server.stats()

    def check_health(self) -> None:
        if not self.server.engine.store.backend.num_slots:
            raise RuntimeError("engine has no slots")
