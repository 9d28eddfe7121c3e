"""A retrained router swaps in live under load: every request succeeds, a broken retrain is refused (422)."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest

from loraplex.demo.data import make_examples
from tests.integration.conftest import DEMO, PORT, demo_args

pytestmark = pytest.mark.integration


def test_reload_under_load_loses_nothing(server, roots, tmp_path):
    from ray import serve
    from safetensors.torch import load_file, save_file

    from loraplex.deployments.app import build_app

    router_dir = tmp_path / "router"
    shutil.copytree(DEMO / "router", router_dir)
    args = demo_args(*roots)
    args["routing"]["router_path"] = str(router_dir)
    args["routing"]["reload_interval_s"] = None  # admin call only: the test decides when
    serve.run(build_app(args), name="reload", route_prefix="/reload")
    base = f"http://127.0.0.1:{PORT}/reload"
    prompts = [e.prompt for task in ("intent", "entities") for e in make_examples(task, 4, seed=3, split="heldout")]
    codes: list[int] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            n = 0
            while not stop.is_set():
                body = {"temperature": 0, "model": "auto", "prompt": prompts[(i + n) % len(prompts)], "max_tokens": 2}
                codes.append(c.post(f"{base}/v1/completions", json=body).status_code)
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()

    def flowing(more: int = 4) -> None:  # wait until `more` requests finished (under load, around each swap)
        target, deadline = len(codes) + more, time.time() + 60
        while len(codes) < target and time.time() < deadline:
            time.sleep(0.05)

    try:
        flowing()
        weights = router_dir / "router.safetensors"
        for round_ in range(3):  # retrain (here: perturbed weights), then swap in while requests flow
            state = load_file(str(weights))
            save_file({k: v + 0.01 * (round_ + 1) for k, v in state.items()}, str(weights))
            r = httpx.post(f"{base}/v1/router/reload", timeout=60)
            assert r.status_code == 200 and r.json()["reloaded"] is True, r.text
            flowing()
        good = (router_dir / "router.json").read_text()
        (router_dir / "router.json").write_text("{broken")
        r = httpx.post(f"{base}/v1/router/reload", timeout=60)
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_router"
        flowing()
        (router_dir / "router.json").write_text(good)
        route = httpx.post(f"{base}/v1/route", json={"prompt": prompts[0]}, timeout=60).json()
        assert route["routing"]["head"] == "trained"  # still serving, the old (valid) router
    finally:
        stop.set()
        for t in threads:
            t.join()
        serve.delete("reload")
    assert len(codes) > 10 and set(codes) == {200}, sorted(set(codes))
