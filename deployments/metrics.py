"""Prometheus metrics (via `ray.serve.metrics`, exported by Ray's metrics agent, no dashboard needed).

Names are prefixed `loraplex_`; Serve adds application/deployment/replica tags. See config/grafana/.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram


class IngressMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "loraplex_requests",
            description="Requests by group, adapter (primary) and outcome status.",
            tag_keys=("group", "adapter", "status"),
        )
        self.confidence = Histogram(
            "loraplex_routing_confidence",
            description="Max router probability of model=auto requests.",
            boundaries=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
            tag_keys=("group",),
        )
        self.expert_share = Counter(
            "loraplex_routed_weight",
            description="Sum of routing weight per adapter (expert share; watch for collapse).",
            tag_keys=("adapter",),
        )

        self.routing_head = Counter(
            "loraplex_routing_head",
            description="model=auto decisions by the head that made them: trained (classifier) or prototype.",
            tag_keys=("head",),
        )
        self.routing_examples = Gauge(
            "loraplex_routing_examples",
            description="Routing examples this ingress replica holds per adapter, by source: registered "
            "(routing_examples.jsonl) or traffic (learned embeddings, routing.learn_from_traffic).",
            tag_keys=("adapter", "source"),
        )
        self._example_tags: set[tuple[str, str]] = set()

    def observe_examples(self, counts: dict[str, dict[str, int]]) -> None:
        tags = set()
        for adapter, by_source in counts.items():
            for source, n in by_source.items():
                self.routing_examples.set(n, tags={"adapter": adapter, "source": source})
                tags.add((adapter, source))
        for adapter, source in self._example_tags - tags:  # removed adapters read 0, not their last count
            self.routing_examples.set(0, tags={"adapter": adapter, "source": source})
        self._example_tags = tags

    def observe(self, routing: dict | None, adapter: str | None, status: int) -> None:
        group = (routing or {}).get("group") or "none"
        self.requests.inc(tags={"group": group, "adapter": adapter or "base", "status": str(status)})
        if routing and routing.get("mode", "").startswith("auto"):
            if routing.get("confidence") is not None:
                self.confidence.observe(routing["confidence"], tags={"group": group})
            if routing.get("head"):
                self.routing_head.inc(tags={"head": routing["head"]})
            for a, w in routing.get("weights", {}).items():
                self.expert_share.inc(w, tags={"adapter": a})


class ExpertMetrics:
    def __init__(self) -> None:
        self.batch_size = Histogram(
            "loraplex_batch_size",
            description="Requests decoding together (the running batch, sampled as each request ends).",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        )
        self.tokens = Counter("loraplex_generated_tokens", description="Generated tokens (rate = tokens/s).")
        self.inflight = Gauge(
            "loraplex_inflight",
            description="Requests accepted by this replica and not answered yet (queued or decoding).",
        )
        self.cache = Counter(
            "loraplex_adapter_cache",
            description="Adapter store lookups by tier (host, device; composed on vLLM groups) and result.",
            tag_keys=("tier", "result"),
        )
        self.load_seconds = Counter(
            "loraplex_adapter_load_seconds", description="Time spent loading+validating adapters from disk."
        )
        self._last: dict[str, float] = {}

    def observe(self, stats: dict) -> None:
        self.batch_size.observe(stats["last_batch_size"])
        self.inflight.set(stats["inflight"])
        for key, tier, result in (
            ("store_host_hits", "host", "hit"),
            ("store_host_misses", "host", "miss"),
            ("store_device_hits", "device", "hit"),
            ("store_device_misses", "device", "miss"),
            ("composed_hits", "composed", "hit"),  # vLLM groups: composed-adapter folders reused / written
            ("composed_misses", "composed", "miss"),
        ):
            delta = stats.get(key, 0) - self._last.get(key, 0)
            if delta:
                self.cache.inc(delta, tags={"tier": tier, "result": result})
        for key, counter in (("tokens", self.tokens), ("store_load_seconds", self.load_seconds)):
            delta = stats[key] - self._last.get(key, 0)
            if delta > 0:
                counter.inc(delta)
        self._last = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
