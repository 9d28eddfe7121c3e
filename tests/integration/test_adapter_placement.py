"""Adapters at scale on a real cluster over HTTP: hub references from a pre-populated cache (offline), the hub
size bound as a 413 naming it, and residency-aware placement across two replicas (a warm adapter sticks to the
replica holding it, a hot one spreads to both)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import DEMO, PORT, demo_args
from tests.unit.conftest import make_hub_cache

PROMPT = "my order ORD-12345 never arrived, where is it?"


@pytest.fixture(scope="module")
def scale(server, roots, tmp_path_factory):
    from ray import serve

    from loraplex.bench.cluster import wait_healthy
    from loraplex.deployments.app import build_app

    base = tmp_path_factory.mktemp("scale")
    adapters = base / "adapters"
    for i in range(8):  # eight adapters with the intent adapter's weights: names differ, answers do not
        shutil.copytree(DEMO / "adapters" / "intent", adapters / f"c{i}")
    cache = base / "hub"
    make_hub_cache(cache, "acme/intent", DEMO / "adapters" / "intent")
    snap = make_hub_cache(cache, "acme/big", DEMO / "adapters" / "intent")
    (snap / "routing_examples.jsonl").write_text('{"prompt": "padding"}\n' * 200_000)  # ~4.4 MB: over the bound
    args = demo_args(*roots)
    args.update(adapter_roots=[str(adapters)], import_roots=[], routing={}, compositions={})
    args["hub"] = {"repos": ["acme/*"], "cache_dir": str(cache), "max_adapter_mb": 2}
    group = args["groups"][0]
    group.update(
        adapters=["c7"],
        num_replicas=2,
        max_slots=2,
        max_host_adapters=4,
        placement={"min_requests": 6, "hot_share": 0.5, "stats_period_s": 0.5},  # c3 stays not hot
    )
    args["groups"] = [group]
    serve.run(build_app(args), name="scale", route_prefix="/scale")
    url = f"http://127.0.0.1:{PORT}/scale"
    wait_healthy(url, timeout_s=180)
    yield url
    serve.delete("scale")


def _complete(url: str, model: str, max_tokens: int = 6) -> httpx.Response:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def _served(url: str, adapter: str) -> dict[str, int]:
    import time

    time.sleep(1.5)  # replicas push their stats about once a second
    replicas = httpx.get(f"{url}/v1/stats", timeout=30).json()["support"]["replicas"]
    return {rid: st.get("requests_by_adapter", {}).get(adapter, 0) for rid, st in replicas.items()}


def test_hub_references_serve_offline_from_the_cache_like_the_local_adapter(scale):
    local = _complete(scale, "c0")
    assert local.status_code == 200, local.text
    for ref in ("hf://acme/intent", "hf://acme/intent@main", "acme/intent"):
        r = _complete(scale, ref)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == local.json()["choices"][0]["text"], ref


HUB_ERRORS = [
    ("over the size bound", "hf://acme/big", 413, "the bound is hub.max_adapter_mb=2.0"),
    ("not in the cache, offline", "hf://acme/missing", 404, "not in the local Hugging Face cache"),
    ("repo not allowed", "hf://evil/x", 400, "hub repo 'evil/x' is not allowed"),
]


@pytest.mark.parametrize("name,ref,status,match", HUB_ERRORS, ids=[c[0] for c in HUB_ERRORS])
def test_hub_reference_errors_over_http(scale, name, ref, status, match):
    r = _complete(scale, ref)
    assert r.status_code == status, r.text
    assert match in r.json()["error"]["message"]


def test_a_warm_adapter_sticks_to_its_replica_and_a_hot_one_spreads(scale):
    for _ in range(4):  # sequential: each later request finds c3 resident on the replica that loaded it
        assert _complete(scale, "c3", 2).status_code == 200
    warm = _served(scale, "c3")
    assert sorted(warm.values()) == [0, 4], warm
    # c5 takes most of the group's traffic (over half): hot, so it goes to the least-loaded replica whatever it holds
    names = ["c5"] * 24 + ["c1", "c2", "c4", "c6"]
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda m: _complete(scale, m, 8).status_code, names))
    assert codes == [200] * len(names)
    hot = _served(scale, "c5")
    assert len(hot) == 2 and all(n > 0 for n in hot.values()), hot


def test_a_request_fanned_out_into_several_calls_is_routed_whole(scale):
    """Every handle call of one ingress request shares Serve's internal request id; the router must still hand
    each call its replica (it did not: the second call's routing task spun forever). Routing only queues the
    calls together when it has to probe queue lengths, so wait out Serve's queue-length cache first."""
    import time

    time.sleep(11)  # RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S (10 s) passes: the next routing probes
    body = {"model": "c5", "prompt": [PROMPT] * 3, "n": 2, "max_tokens": 4, "temperature": 0.8, "seed": 1}
    r = httpx.post(f"{scale}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert sorted(c["index"] for c in r.json()["choices"]) == list(range(6))
