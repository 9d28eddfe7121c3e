"""The app's metrics board (one small replica) and the pusher each replica runs. `GET /metrics`, `/v1/stats`
and `/health` on the ingress read the board, so any ingress replica answers for the whole app; the state
and its rules live in `observability.board` (unit-tested without Serve)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ray import serve

from loraplex.observability.board import Board

log = logging.getLogger("ray.serve")
PUSH_INTERVAL_S = 1.0


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
class MetricsBoard:
    def __init__(self, ttl_s: float = 10.0):
        self.board = Board(ttl_s)

    def push(self, role: str, group: str | None, replica: str, text: str, stats: dict) -> None:
        self.board.push(role, group, replica, text, stats)

    def drop(self, replica: str) -> None:
        self.board.drop(replica)

    def exposition(self) -> str:
        return self.board.exposition()

    def stats(self) -> dict:
        return self.board.stats()

    def groups(self) -> dict[str, int]:
        return self.board.groups()


def replica_name() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (tests building the class directly)
        return f"local-{threading.get_ident()}"


class Pusher:
    """A daemon thread: every second, `collect()` -> (exposition text, stats) -> the board. A board that is
    restarting costs a few pushes, never the replica's requests."""

    def __init__(self, board, role: str, group: str | None, collect: Callable[[], tuple[str, dict]]):
        self.board, self.role, self.group, self.collect = board, role, group, collect
        self.replica = replica_name()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loraplex-metrics", daemon=True)
        self._thread.start()

    def push_now(self) -> None:
        text, stats = self.collect()
        self.board.push.remote(self.role, self.group, self.replica, text, stats).result(timeout_s=10)

    async def push_async(self) -> None:
        """From an async handler (no blocking on the replica's event loop)."""
        text, stats = self.collect()
        await self.board.push.remote(self.role, self.group, self.replica, text, stats)

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(PUSH_INTERVAL_S):
            try:
                self.push_now()
                failures = 0
            except Exception as e:
                failures += 1
                if failures in (1, 30):  # once, and again if it persists
                    log.warning("metrics push to the board failed (%s): %s", failures, e)

    def stop(self) -> None:
        self._stop.set()
        try:
            self.board.drop.remote(self.replica)
        except Exception:
            pass
