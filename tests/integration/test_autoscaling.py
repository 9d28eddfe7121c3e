"""Each expert group scales on its own load: a hot group gets replicas, a cold one stays at its floor."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from loraplex.demo.data import make_examples
from tests.integration.conftest import PORT, demo_args

pytestmark = pytest.mark.integration


def replicas(app: str) -> dict[str, int]:
    from ray import serve

    deps = serve.status().applications[app].deployments
    return {name: deps[name].replica_states.get("RUNNING", 0) for name in ("expert_support", "expert_extraction")}


def test_hot_group_scales_up_and_back_while_cold_group_stays(server, roots):
    from ray import serve

    from loraplex.deployments.app import build_app

    args = demo_args(*roots)
    for g in args["groups"]:
        g["autoscaling"] = {
            "enabled": True,
            "min_replicas": 1,
            "max_replicas": 2,
            "target_load": 2,
            "upscale_delay_s": 0,
            "downscale_delay_s": 4,
            "look_back_period_s": 2,
        }
    serve.run(build_app(args), name="scaling", route_prefix="/scaling")
    url = f"http://127.0.0.1:{PORT}/scaling/v1/completions"
    prompts = [e.prompt for e in make_examples("entities", 16, seed=5, split="heldout")]
    codes: list[int] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            n = 0
            while not stop.is_set():
                codes.append(
                    c.post(
                        url,
                        json={
                            "temperature": 0,
                            "model": "entities",
                            "prompt": prompts[(i + n) % 16],
                            "max_tokens": 32,
                            "ignore_eos": True,
                        },
                    ).status_code
                )
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    seen = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            seen.append(replicas("scaling"))
            if seen[-1]["expert_extraction"] >= 2:
                break
            time.sleep(1)
        time.sleep(3)  # a little load on two replicas
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert max(s["expert_extraction"] for s in seen) >= 2, seen
    assert all(s["expert_support"] == 1 for s in seen), seen
    assert codes and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    deadline = time.time() + 90
    while time.time() < deadline and replicas("scaling")["expert_extraction"] > 1:
        time.sleep(1)
    assert replicas("scaling") == {"expert_support": 1, "expert_extraction": 1}
    serve.delete("scaling")
