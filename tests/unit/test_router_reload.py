"""Live router reload: checked before the swap, atomic for requests in flight, a broken retrain keeps the old one."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from loraplex.experts.errors import ConfigError, RouterReloadError
from loraplex.gateway.router_reload import RouterReloader
from loraplex.router.network import RouterNet
from loraplex.router.policy import PolicyConfig
from loraplex.router.router import CONFIG_FILE, Router


class _Feat:
    dim = 3

    def encode(self, texts):
        return torch.tensor([[float(w in t) for w in ("alpha", "beta", "gamma")] for t in texts])

    def spec(self):
        return {"kind": "sentence", "path": "unused"}


def _router(seed: int, experts=("a", "b", "c")) -> Router:
    torch.manual_seed(seed)
    return Router(_Feat(), RouterNet(3, len(experts), hidden=4, dropout=0.0), list(experts), PolicyConfig())


class _Holder:
    def __init__(self, router):
        self.router, self.installed = router, 0

    def install(self, router):
        self.router, self.installed = router, self.installed + 1


def _reloader(path, holder, known=("a", "b", "c")):
    def check(router):
        missing = [e for e in router.experts if e not in known]
        if missing:
            raise ConfigError([f"router routes to missing adapter(s) {missing}"])

    return RouterReloader(path, holder.router, holder.install, check)


def test_reload_swaps_only_when_the_files_change_or_when_forced(tmp_path):
    _router(0).save(tmp_path)
    holder = _Holder(Router.load(tmp_path, featurizer=_Feat()))
    reloader = _reloader(tmp_path, holder)
    assert reloader.reload()["reloaded"] is False and holder.installed == 0
    before = holder.router.logits(["alpha"])
    time.sleep(0.01)
    _router(1).save(tmp_path)  # a retrain writes new files
    out = reloader.reload()
    assert out["reloaded"] is True and out["reloads"] == 1 and holder.installed == 1
    assert not torch.allclose(holder.router.logits(["alpha"]), before)
    assert holder.router.featurizer is reloader.current.featurizer  # same featurizer spec: reused, not reloaded
    assert reloader.reload(force=True)["reloaded"] is True and holder.installed == 2


CASES = [
    ("broken json", lambda p: (p / CONFIG_FILE).write_text("{not json"), "was not swapped in"),
    ("missing weights", lambda p: (p / "router.safetensors").unlink(), "no trained router at"),
    ("unknown adapter", lambda p: _router(2, ("a", "zz", "c")).save(p), r"missing adapter\(s\) \['zz'\]"),
]


@pytest.mark.parametrize("name,damage,match", CASES, ids=[c[0] for c in CASES])
def test_a_broken_retrain_keeps_the_old_router_serving(tmp_path, name, damage, match):
    _router(0).save(tmp_path)
    holder = _Holder(Router.load(tmp_path, featurizer=_Feat()))
    reloader = _reloader(tmp_path, holder)
    old = holder.router
    time.sleep(0.01)
    damage(tmp_path)
    with pytest.raises(RouterReloadError, match=match) as e:
        reloader.reload(force=True)
    assert e.value.status == 422 and holder.router is old and holder.installed == 0


def test_the_poll_thread_picks_up_a_retrain(tmp_path):
    _router(0).save(tmp_path)
    holder = _Holder(Router.load(tmp_path, featurizer=_Feat()))
    reloader = _reloader(tmp_path, holder)
    reloader.poll(interval_s=0.05)
    try:
        time.sleep(0.02)
        _router(3).save(tmp_path)
        deadline = time.time() + 5
        while holder.installed == 0 and time.time() < deadline:
            time.sleep(0.02)
        assert holder.installed == 1
    finally:
        reloader.stop()


def test_requests_routing_during_reloads_all_succeed(tmp_path):
    _router(0).save(tmp_path)
    holder = _Holder(Router.load(tmp_path, featurizer=_Feat()))
    reloader = _reloader(tmp_path, holder)
    errors, routed = [], [0]
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                router = holder.router  # what the gateway does: read once per request
                assert len(router.route(["alpha beta"])) == 1
                routed[0] += 1
            except Exception as e:  # pragma: no cover - the assertion below reports it
                errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for seed in range(10):
        _router(seed + 10).save(tmp_path)
        reloader.reload(force=True)
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and routed[0] > 10 and holder.installed == 10
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["experts"] == holder.router.experts
