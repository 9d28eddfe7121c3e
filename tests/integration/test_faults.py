"""Faults: a replica killed under load, a corrupt adapter, an ingress restart. Nothing lost or hung."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest

from loraplex.config.app import AppArgs
from loraplex.demo.data import make_examples
from tests.integration.conftest import DEMO, PORT, demo_args

pytestmark = pytest.mark.integration


def running(app: str, dep: str) -> int:
    from ray import serve

    return serve.status().applications[app].deployments[dep].replica_states.get("RUNNING", 0)


def test_killing_an_expert_replica_under_load_loses_nothing(server, roots):
    import ray
    from ray import serve

    from loraplex.deployments.app import build_app

    args = demo_args(*roots)
    args["groups"][1]["num_replicas"] = 2
    serve.run(build_app(args), name="chaos", route_prefix="/chaos")
    url = f"http://127.0.0.1:{PORT}/chaos/v1/completions"
    prompts = [e.prompt for e in make_examples("entities", 8, seed=9, split="heldout")]
    outcomes: list[object] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=90) as c:
            n = 0
            while not stop.is_set():
                try:
                    outcomes.append(
                        c.post(
                            url,
                            json={
                                "temperature": 0,
                                "model": "entities",
                                "prompt": prompts[(i + n) % 8],
                                "max_tokens": 24,
                            },
                        ).status_code
                    )
                except httpx.HTTPError as e:  # a hang would surface here as a timeout
                    outcomes.append(repr(e))
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(4)
        victim = next(
            a
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "chaos" in a["name"] and "expert_extraction" in a["name"]
        )
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        time.sleep(8)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert outcomes and all(o in (200, 503) for o in outcomes), {
        str(o): outcomes.count(o) for o in set(map(str, outcomes))
    }
    assert outcomes.count(200) >= 0.8 * len(outcomes)
    deadline = time.time() + 90
    while time.time() < deadline and running("chaos", "expert_extraction") < 2:
        time.sleep(1)
    assert running("chaos", "expert_extraction") == 2  # Serve brought the group back to its target
    serve.delete("chaos")


def test_corrupt_adapters_fail_alone_and_the_replica_keeps_serving(server, roots):
    managed, _ = roots
    cases = {
        "broken/truncated": lambda p: (p / "adapter_model.safetensors").write_bytes(
            (p / "adapter_model.safetensors").read_bytes()[:100]
        ),
        "broken/badshape": lambda p: (p / "adapter_config.json").write_text(
            (p / "adapter_config.json").read_text()
        ),  # replaced below
        "broken/nomodule": lambda p: None,
    }
    from safetensors.torch import load_file, save_file

    for name, corrupt in cases.items():
        dest = managed / name
        shutil.copytree(DEMO / "adapters" / "intent", dest)
        corrupt(dest)
    st = load_file(str(managed / "broken/badshape/adapter_model.safetensors"))
    k = next(k for k in st if "lora_B" in k)
    st[k] = st[k][:-1]
    save_file(st, str(managed / "broken/badshape/adapter_model.safetensors"))
    st = load_file(str(managed / "broken/nomodule/adapter_model.safetensors"))
    st = {k.replace("q_proj", "zz_proj"): v for k, v in st.items()}
    save_file(st, str(managed / "broken/nomodule/adapter_model.safetensors"))
    expected = {
        "broken/truncated": "cannot read adapter_model.safetensors",
        "broken/badshape": "do not fit the base layer",
        "broken/nomodule": "target modules not in the base model",
    }
    # Folders dropped in by hand show after the ingress's next background scan (adapter_scan_interval_s).
    deadline = time.monotonic() + AppArgs.model_fields["adapter_scan_interval_s"].default + 10
    while not set(expected) <= {m["id"] for m in httpx.get(f"{server}/v1/models", timeout=30).json()["data"]}:
        assert time.monotonic() < deadline, "the background scan never listed the dropped-in folders"
        time.sleep(0.5)
    e = make_examples("intent", 1, seed=3, split="heldout")[0]
    for name, msg in expected.items():
        r = httpx.post(
            f"{server}/v1/completions",
            json={"temperature": 0, "model": name, "prompt": e.prompt, "max_tokens": 8},
            timeout=60,
        )
        assert r.status_code == 422 and msg in r.json()["error"]["message"], r.text
    ok = httpx.post(
        f"{server}/v1/completions",
        json={"temperature": 0, "model": "intent", "prompt": e.prompt, "max_tokens": 8},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
    for name in expected:
        shutil.rmtree(managed / name)


def test_ingress_restart_keeps_config_registered_adapters_and_compositions(server, roots):
    import ray

    _, imports = roots
    shutil.copytree(DEMO / "adapters" / "entities", imports / "keep")
    assert (
        httpx.post(
            f"{server}/v1/adapters", json={"name": "kept/entities", "source": str(imports / "keep")}, timeout=60
        ).status_code
        == 201
    )
    mix = {"mode": "blend", "weights": {"kept/entities": 0.8, "entities": 0.2}}
    r = httpx.post(f"{server}/v1/compositions", json={"name": "kept/mix", "composition": mix}, timeout=30)
    assert r.status_code == 201, r.text
    victim = next(
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "loraplex" in a["name"] and "RouterIngress" in a["name"]
    )
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    e = make_examples("entities", 1, seed=4, split="heldout")[0]
    deadline, r = time.time() + 120, None
    while time.time() < deadline:
        try:
            r = httpx.post(
                f"{server}/v1/completions",
                json={"temperature": 0, "model": "kept/entities", "prompt": e.prompt, "max_tokens": 32},
                timeout=30,
            )
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    assert r is not None and r.status_code == 200, r and r.text
    assert r.json()["routing"]["weights"] == {"kept/entities": 1.0}
    assert "auto" in [
        m["id"] for m in httpx.get(f"{server}/v1/models", timeout=30).json()["data"]
    ]  # router config back too
    named = httpx.post(
        f"{server}/v1/completions",
        json={"temperature": 0, "model": "kept/mix", "prompt": e.prompt, "max_tokens": 8},
        timeout=60,
    )
    assert named.status_code == 200, named.text  # the registered composition survived the restart too
    refused = httpx.delete(f"{server}/v1/adapters/kept/entities", timeout=30)
    assert refused.status_code == 409 and "['kept/mix']" in refused.json()["error"]["message"]
    assert httpx.delete(f"{server}/v1/compositions/kept/mix", timeout=30).status_code == 200
    assert httpx.delete(f"{server}/v1/adapters/kept/entities", timeout=30).status_code == 200


def test_client_disconnect_mid_stream_cancels_the_generation_and_frees_its_row(server):
    """A client that goes away mid-stream must not keep a batch row decoding to max_tokens."""
    stats = lambda: httpx.get(f"{server}/v1/stats", timeout=30).json()["extraction"]["total"]  # noqa: E731
    before = stats()
    e = make_examples("entities", 1, seed=5, split="heldout")[0]
    budget = 120
    body = {
        "temperature": 0,
        "model": "entities",
        "prompt": e.prompt,
        "max_tokens": budget,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        received = 0
        for line in r.iter_lines():
            received += line.startswith("data: ")
            if received == 3:  # role chunk + two tokens, then hang up
                break
    deadline, after = time.time() + 30, before
    while time.time() < deadline:
        after = stats()
        if after["cancelled"] > before["cancelled"] and after["inflight"] == 0:
            break
        time.sleep(0.2)
    assert after["cancelled"] == before["cancelled"] + 1, (before, after)
    assert after["inflight"] == 0
    assert after["tokens"] - before["tokens"] < budget  # decoding stopped early: the row was freed
    ok = httpx.post(
        f"{server}/v1/completions",
        json={"temperature": 0, "model": "entities", "prompt": e.prompt, "max_tokens": 16},
        timeout=60,
    )
    assert ok.status_code == 200
