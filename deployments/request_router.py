"""Serve's request-router API around `gateway.placement.Placement`: residency-aware replica choice per group.

Configured per expert group through `request_router_config` (`config.app.GroupConfig.serve_options`); the
request's adapter arrives as its multiplexed model id (the ingress sets it), each replica's holdings as its
`routing_stats` (`ExpertDeployment.record_routing_stats`).

Serve hands the replica a routing task found to *a* pending request. Without FIFOMixin it matches by
internal request id only, and every handle call made inside one ingress request shares that id (a
multi-prompt or `n > 1` completion fans out into several calls): the second call was never matched, its
routing task found a replica forever without assigning it, and that spin starved the ingress's router
loop (the Node client's 2-prompt, n=2 request hung). FIFOMixin + MultiplexMixin match by adapter first (the
oldest pending request for the adapter this replica was chosen for), then the queue's head, so a
replica chosen for adapter A still goes to a request for A. `should_backoff` makes Serve back off
instead of re-probing at once when every tier is full.
"""

from __future__ import annotations

from ray.serve.request_router import (
    FIFOMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from loraplex.config.app import PlacementConfig
from loraplex.gateway.placement import Placement, ReplicaView


class ResidencyRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        """`kwargs`: `PlacementConfig` fields (GroupConfig.serve_options passes them)."""
        self.placement = Placement.from_config(PlacementConfig(**kwargs))

    @staticmethod
    def _adapter(pending_request: PendingRequest | None) -> str | None:
        return (pending_request.metadata.multiplexed_model_id or None) if pending_request is not None else None

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:  # all tiers tried and full: back off before the next round
            pending_request.routing_context.should_backoff = True
        cache = self.replica_queue_len_cache
        views = [
            ReplicaView.from_stats(r.replica_id.unique_id, r.routing_stats, cache.get(r.replica_id))
            for r in candidate_replicas
        ]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        return [[by_id[i] for i in tier] for tier in self._placement.rank(self._adapter(pending_request), views)]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        self._placement.routed(self._adapter(pending_request), replica_id.unique_id)

    @property
    def _placement(self) -> Placement:
        if not hasattr(self, "placement"):  # initialize_state not called (no kwargs): the defaults
            self.placement = Placement.from_config()
        return self.placement
