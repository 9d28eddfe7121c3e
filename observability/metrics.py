"""The Prometheus metrics of one process (an ingress or an expert replica), in a registry of its own.

Each process renders its registry and pushes it, with its stats, to the app's metrics board every second
(`observability.board`); `GET /metrics` on the serving port renders every process's metrics as one
exposition, each sample labelled with where it came from (`role`, `group`, `replica`). Prometheus scrapes
one URL and sees the whole app, whichever ingress replica answers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_GAP_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
CONFIDENCE = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


class IngressMetrics(_Metrics):
    """What the ingress sees of each request: outcome, end-to-end latency, tokens, routing."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.requests = Counter(
            "loraplex_requests",
            "Requests by group, adapter (primary) and HTTP status.",
            ("group", "adapter", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "loraplex_request_latency_seconds",
            "End-to-end latency at the ingress (body read to last byte queued), by group and adapter.",
            ("group", "adapter"),
            buckets=LATENCY_S,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "loraplex_prompt_tokens", "Prompt tokens of answered requests.", ("group", "adapter"), registry=r
        )
        self.completion_tokens = Counter(
            "loraplex_completion_tokens", "Completion tokens of answered requests.", ("group", "adapter"), registry=r
        )
        self.confidence = Histogram(
            "loraplex_routing_confidence",
            "Max router probability of model=auto requests.",
            ("group",),
            buckets=CONFIDENCE,
            registry=r,
        )
        self.decisions = Counter(
            "loraplex_routing_decisions",
            "model=auto decisions by mode (auto, or auto:fallback_*) and the head that made them.",
            ("mode", "head"),
            registry=r,
        )
        self.routed_weight = Counter(
            "loraplex_routed_weight",
            "Sum of routing weight per adapter (expert share; watch for collapse).",
            ("adapter",),
            registry=r,
        )
        self.routing_examples = Gauge(
            "loraplex_routing_examples",
            "Routing examples this ingress holds per adapter, by source: registered (routing_examples.jsonl) or "
            "traffic (learned embeddings, routing.learn_from_traffic).",
            ("adapter", "source"),
            registry=r,
        )
        self.adapters_on_disk = Gauge(
            "loraplex_adapters_on_disk", "Adapters under the app's adapter roots (the disk tier).", registry=r
        )
        self._example_tags: set[tuple[str, str]] = set()

    def observe(
        self, routing: dict | None, adapter: str | None, status: int, latency_s: float, usage: dict | None
    ) -> None:
        group = (routing or {}).get("group") or "none"
        adapter = adapter or "base"
        self.requests.labels(group, adapter, str(status)).inc()
        self.latency.labels(group, adapter).observe(latency_s)
        if usage:
            self.prompt_tokens.labels(group, adapter).inc(usage.get("prompt_tokens", 0))
            self.completion_tokens.labels(group, adapter).inc(usage.get("completion_tokens", 0))
        if routing and routing.get("mode", "").startswith("auto"):
            if routing.get("confidence") is not None:
                self.confidence.labels(group).observe(routing["confidence"])
            self.decisions.labels(routing["mode"], routing.get("head") or "none").inc()
            for a, w in routing.get("weights", {}).items():
                self.routed_weight.labels(a).inc(w)

    def observe_examples(self, counts: dict[str, dict[str, int]]) -> None:
        tags = set()
        for adapter, by_source in counts.items():
            for source, n in by_source.items():
                self.routing_examples.labels(adapter, source).set(n)
                tags.add((adapter, source))
        for adapter, source in self._example_tags - tags:  # removed adapters read 0, not their last count
            self.routing_examples.labels(adapter, source).set(0)
        self._example_tags = tags


class ExpertMetrics(_Metrics):
    """One expert replica: per-request latency split (from the engine's `Timing`), batch, adapters by tier."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.ttft = Histogram(
            "loraplex_time_to_first_token_seconds",
            "Arrival at the replica to the first visible token.",
            ("adapter",),
            buckets=LATENCY_S,
            registry=r,
        )
        self.tpot = Histogram(
            "loraplex_time_per_output_token_seconds",
            "Mean gap between output tokens after the first, per request.",
            ("adapter",),
            buckets=TOKEN_GAP_S,
            registry=r,
        )
        self.itl = Histogram(
            "loraplex_inter_token_latency_seconds",
            "Every gap between consecutive output tokens.",
            ("adapter",),
            buckets=TOKEN_GAP_S,
            registry=r,
        )
        self.queue = Histogram(
            "loraplex_queue_time_seconds",
            "Arrival at the replica to getting batch rows (native engine).",
            ("adapter",),
            buckets=LATENCY_S,
            registry=r,
        )
        self.e2e = Histogram(
            "loraplex_engine_latency_seconds",
            "Arrival at the replica to the answer.",
            ("adapter",),
            buckets=LATENCY_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "loraplex_batch_size",
            "Requests decoding together (sampled as each request ends).",
            buckets=BATCH,
            registry=r,
        )
        self.tokens = Counter("loraplex_generated_tokens", "Generated tokens (rate = tokens/s).", registry=r)
        self.inflight = Gauge(
            "loraplex_inflight", "Requests accepted and not answered (queued or decoding).", registry=r
        )
        self.pending = Gauge("loraplex_pending", "Requests accepted and not decoding yet.", registry=r)
        self.parked = Gauge(
            "loraplex_parked", "Requests waiting for their adapter to load (holding no batch row).", registry=r
        )
        self.loads_in_flight = Gauge(
            "loraplex_adapter_loads_in_flight", "Adapter loads (disk -> host) running on the loader thread.", registry=r
        )
        self.cache = Counter(
            "loraplex_adapter_cache",
            "Adapter lookups by tier (host, device; composed on vLLM groups) and result.",
            ("tier", "result"),
            registry=r,
        )
        self.loads = Counter(
            "loraplex_adapter_loads",
            "Adapter loads into a tier: host (disk -> memory, validated) or device (slot).",
            ("tier",),
            registry=r,
        )
        self.evictions = Counter("loraplex_adapter_evictions", "Adapters evicted from a tier.", ("tier",), registry=r)
        self.load_failures = Counter("loraplex_adapter_load_failures", "Adapter loads that failed.", registry=r)
        self.load_seconds = Counter(
            "loraplex_adapter_load_seconds", "Time spent loading+validating adapters from disk.", registry=r
        )
        self.resident = Gauge(
            "loraplex_adapter_resident",
            "1 for each adapter held by this replica, by tier (device slot / host).",
            ("adapter", "tier"),
            registry=r,
        )
        self.resident_count = Gauge(
            "loraplex_adapters_resident", "Adapters this replica holds, by tier.", ("tier",), registry=r
        )
        self._last: dict[str, float] = {}
        self._resident: set[tuple[str, str]] = set()

    def observe_result(self, adapter: str | None, timing, batch_size: int) -> None:
        """One answered request's `experts.request.Timing`, and the running batch as it ends."""
        self.batch_size.observe(batch_size)
        if timing is None:
            return
        a = adapter or "base"
        if timing.queue_s is not None:
            self.queue.labels(a).observe(timing.queue_s)
        if timing.ttft_s is not None:
            self.ttft.labels(a).observe(timing.ttft_s)
        if timing.tpot_s is not None:
            self.tpot.labels(a).observe(timing.tpot_s)
        itl = self.itl.labels(a)
        for gap in timing.token_gaps_s:
            itl.observe(gap)
        self.e2e.labels(a).observe(timing.e2e_s)

    def observe_stats(self, stats: dict) -> None:
        """The engine's counters (`ServingEngine.stats`): gauges set, counters advanced by what changed."""
        self.inflight.set(stats["inflight"])
        self.pending.set(stats.get("pending", 0))
        self.parked.set(stats.get("parked", 0))
        self.loads_in_flight.set(len(stats.get("loading", ())))
        last = self._last

        def delta(key: str) -> float:
            return max(0.0, stats.get(key, 0) - last.get(key, 0))

        for key, tier, result in (
            ("store_host_hits", "host", "hit"),
            ("store_host_misses", "host", "miss"),
            ("store_device_hits", "device", "hit"),
            ("store_device_misses", "device", "miss"),
            ("composed_hits", "composed", "hit"),  # vLLM groups: composed-adapter folders reused / written
            ("composed_misses", "composed", "miss"),
        ):
            if delta(key):
                self.cache.labels(tier, result).inc(delta(key))
        host_loads = delta("store_host_misses") - delta("store_load_failures")
        for tier, n in (("host", host_loads), ("device", delta("store_device_misses"))):
            if n > 0:
                self.loads.labels(tier).inc(n)
        for tier, key in (("host", "store_evictions_host"), ("device", "store_evictions_device")):
            if delta(key):
                self.evictions.labels(tier).inc(delta(key))
        for counter, key in (
            (self.tokens, "tokens"),
            (self.load_seconds, "store_load_seconds"),
            (self.load_failures, "store_load_failures"),
        ):
            if delta(key):
                counter.inc(delta(key))
        self._last = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
        held = {(a, "device") for a in stats.get("resident", [])} | {(a, "host") for a in stats.get("cached", [])}
        for a, tier in held:
            self.resident.labels(a, tier).set(1)
        for a, tier in self._resident - held:
            self.resident.remove(a, tier)
        self._resident = held
        for tier in ("device", "host"):
            self.resident_count.labels(tier).set(sum(t == tier for _, t in held))
