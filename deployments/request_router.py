"""Serve's request-router API around `gateway.placement.Placement`: residency-aware replica choice per group.

Configured per expert group through `request_router_config` (`config.app.GroupConfig.serve_options`); the
request's adapter arrives as its multiplexed model id (the ingress sets it), each replica's holdings as its
`routing_stats` (`ExpertDeployment.record_routing_stats`). No FIFOMixin: the replica chosen for a request
goes to that request, not to whichever request heads the queue (that would hand one adapter's residency
choice to another adapter's request).
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from loraplex.config.app import PlacementConfig
from loraplex.gateway.placement import Placement, ReplicaView


class ResidencyRouter(RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        """`kwargs`: `PlacementConfig` fields (GroupConfig.serve_options passes them)."""
        self.placement = Placement.from_config(PlacementConfig(residency=True, **kwargs))

    @staticmethod
    def _adapter(pending_request: PendingRequest | None) -> str | None:
        return (pending_request.metadata.multiplexed_model_id or None) if pending_request is not None else None

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
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
