"""The simulated GPUs of one run (`ReplicaPool`): which group each replica serves, its lifecycle and its engine.

- One replica = one GPU running a continuous-batching engine: a decode step over a batch of b requests
  takes `step_fixed_s + step_per_seq_s * b`, at most `max_batch` requests at once; every admitted request
  stalls its replica for `prefill_s`; a request for an adapter not in the replica's `max_slots` device
  slots (LRU, the group's first adapters preloaded) stalls it `adapter_load_s` more.
- A new replica holds its GPU at once and serves after a cold start drawn from `cold_start_s` (model
  load); a removed replica stops taking requests and holds its GPU until its running requests finish
  (Serve's graceful drain). At most `gpus` GPUs exist: replicas that do not fit wait, first come first served.
- Routing: a request goes to its group's least-loaded ready replica that already holds its adapter, else
  the least-loaded one (idealised power-of-two-choices plus multiplexing).

State lives in flat per-GPU arrays and Python lists, not one object per replica, because the admission
loop runs once per request and the decode step once per time step over every GPU.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from loraplex.autoscaling.simconfig import SimConfig


class ReplicaPool:
    def __init__(self, cfg: SimConfig, group_of: np.ndarray, rng: np.random.Generator):
        """`group_of`: adapter -> group (a replica preloads its group's first adapters); `rng` draws cold starts."""
        G, R, B = cfg.groups, cfg.gpus, cfg.max_batch
        self.cfg, self.rng = cfg, rng
        self.n_gpus, self.max_batch = R, B
        # Per GPU slot.
        self.r_group = np.full(R, -1, dtype=np.int64)
        self.n_active = np.zeros(R, dtype=np.int64)
        self.stall = np.zeros(R)  # engine time still owed to prefills and adapter loads
        self.rem = np.zeros((R, B))  # decode steps left per batch row
        self.occ = np.zeros((R, B), dtype=bool)
        self.req = np.full((R, B), -1, dtype=np.int64)
        self.free_cols: list[list[int]] = [list(range(B)) for _ in range(R)]
        self.lru: list[OrderedDict] = [OrderedDict() for _ in range(R)]
        self.free_gpus = list(range(R - 1, -1, -1))
        # Per group.
        self.ready: list[list[int]] = [[] for _ in range(G)]
        self.starting: list[list[tuple[float, int]]] = [[] for _ in range(G)]
        self.draining: list[int] = []
        self.pending: deque[int] = deque()  # groups waiting for a GPU, first come first served
        self.n_pending = [0] * G
        self.n_draining = [0] * G
        self.members = [np.flatnonzero(group_of == g).tolist() for g in range(G)]
        self.starts = 0
        self.adapter_loads = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, g: int, now: float, warm: bool) -> None:
        """Put a replica of group `g` on a free GPU: serving at once when `warm`, else after a cold start."""
        r = self.free_gpus.pop()
        self.r_group[r] = g
        self.stall[r] = 0.0
        lru = self.lru[r]
        lru.clear()
        for a in self.members[g][: self.cfg.max_slots]:  # pinned adapters loaded at start
            lru[a] = True
        if warm:
            self.ready[g].append(r)
        else:
            self.starting[g].append((now + float(self.rng.uniform(*self.cfg.cold_start_s)), r))
            self.starts += 1

    def _release(self, r: int) -> None:
        self.r_group[r] = -1
        self.free_gpus.append(r)

    def place_pending(self, now: float) -> None:
        """Start waiting replicas on free GPUs, oldest request first."""
        while self.pending and self.free_gpus:
            g = self.pending.popleft()
            self.n_pending[g] -= 1
            self.start(g, now, warm=False)

    def advance(self, now: float) -> None:
        """Cold starts finish, drains finish, waiting replicas get the freed GPUs."""
        ready, starting = self.ready, self.starting
        for g in range(len(ready)):
            if starting[g]:
                still = []
                for at, r in starting[g]:
                    if at <= now:
                        ready[g].append(r)
                    else:
                        still.append((at, r))
                starting[g] = still
        if self.draining:
            keep = []
            for r in self.draining:
                if self.n_active[r] == 0:
                    self.n_draining[int(self.r_group[r])] -= 1
                    self._release(r)
                else:
                    keep.append(r)
            self.draining = keep
        self.place_pending(now)

    def n_ready(self, g: int) -> int:
        return len(self.ready[g])

    def target_of(self, g: int) -> int:
        """Group `g`'s replica target as Serve holds it: serving, starting and waiting for a GPU."""
        return len(self.ready[g]) + len(self.starting[g]) + self.n_pending[g]

    def set_target(self, g: int, n: int, now: float) -> None:
        """Move group `g`'s target to `n`: queue new replicas for GPUs, or remove the cheapest ones first
        (not yet placed, then still starting, then the least busy serving ones, which drain)."""
        cur = self.target_of(g)
        if n > cur:
            for _ in range(n - cur):
                self.pending.append(g)
            self.n_pending[g] += n - cur
            return
        k = cur - n
        if k <= 0:
            return
        if self.n_pending[g]:  # cancel replicas not placed yet, newest first
            drop = min(k, self.n_pending[g])
            kept, seen = deque(), 0
            for x in reversed(self.pending):
                if x == g and seen < drop:
                    seen += 1
                    continue
                kept.appendleft(x)
            self.pending.clear()
            self.pending.extend(kept)
            self.n_pending[g] -= drop
            k -= drop
        starting, ready = self.starting[g], self.ready[g]
        while k and starting:  # then replicas still starting (Serve stops those first)
            _, r = starting.pop()
            self._release(r)
            k -= 1
        while k and ready:  # then the least busy serving replicas drain
            r = min(ready, key=lambda x: self.n_active[x])
            ready.remove(r)
            self.draining.append(r)
            self.n_draining[g] += 1
            k -= 1

    # -- routing and service ------------------------------------------------------------------

    def admit(self, g: int, queue: deque[int], adapter: list[int], tokens: list[float]) -> None:
        """Move requests from group `g`'s FIFO `queue` into its ready replicas while they have free batch rows."""
        rs = self.ready[g]
        if not queue or not rs:
            return
        cfg, n_active, lru, stall = self.cfg, self.n_active, self.lru, self.stall
        req, rem, occ, free_cols = self.req, self.rem, self.occ, self.free_cols
        B, max_slots, prefill_s = self.max_batch, cfg.max_slots, cfg.prefill_s
        free = [B - int(n_active[r]) for r in rs]
        total_free = sum(free)
        while queue and total_free:
            i = queue.popleft()
            a = adapter[i]
            best = best_any = -1
            bf = baf = 0
            for j, r in enumerate(rs):
                f = free[j]
                if f > baf:
                    best_any, baf = j, f
                if f > bf and a in lru[r]:
                    best, bf = j, f
            extra = prefill_s
            if best < 0:
                best = best_any
                r = rs[best]
                cache = lru[r]
                if len(cache) >= max_slots:
                    cache.popitem(last=False)
                cache[a] = True
                extra += cfg.adapter_load_s
                self.adapter_loads += 1
            else:
                r = rs[best]
                lru[r].move_to_end(a)
            free[best] -= 1
            total_free -= 1
            c = free_cols[r].pop()
            req[r, c] = i
            rem[r, c] = tokens[i]
            occ[r, c] = True
            n_active[r] += 1
            stall[r] += extra

    def serve(self, now: float, dt: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Every busy replica decodes its batch over [now, now + dt); the requests that finished and when
        (interpolated within the step), or None."""
        t0, t1 = self.cfg.step_fixed_s, self.cfg.step_per_seq_s
        stall, rem, occ, req = self.stall, self.rem, self.occ, self.req
        used = np.minimum(stall, dt)
        stall -= used
        step = t0 + t1 * self.n_active
        prog = (dt - used) / step
        rem -= prog[:, None]
        done = occ & (rem <= 0)
        if not done.any():
            return None
        rr, cc = np.nonzero(done)
        ids = req[rr, cc]
        finish = now + used[rr] + (rem[rr, cc] + prog[rr]) * step[rr]
        req[rr, cc] = -1
        occ[rr, cc] = False
        self.n_active -= np.bincount(rr, minlength=self.n_gpus)
        for r, c in zip(rr.tolist(), cc.tolist()):
            self.free_cols[r].append(c)
        return ids, finish

    # -- what is measured -----------------------------------------------------------------------

    def inflight(self) -> np.ndarray:
        """Requests running on each group's ready replicas (the replica side of the group load)."""
        out = np.zeros(len(self.ready))
        for g, rs in enumerate(self.ready):
            if rs:
                out[g] = self.n_active[rs].sum()
        return out

    def held(self) -> list[int]:
        """GPUs each group holds: serving, starting and draining replicas."""
        return [len(self.ready[g]) + len(self.starting[g]) + self.n_draining[g] for g in range(len(self.ready))]

    def ready_counts(self) -> list[int]:
        return [len(rs) for rs in self.ready]

    def gpus_held(self) -> int:
        return self.n_gpus - len(self.free_gpus)

    def running(self) -> int:
        return int(self.n_active.sum())
