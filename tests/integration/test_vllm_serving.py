"""A demo app with one vLLM group and one native group (config/serve.vllm.yaml) on a real local Ray cluster,
over real HTTP with the real `openai` client: every composition mode, streaming, the logits blend sent
to the native group, answers equal the all-native app's, client disconnect aborts, a killed vLLM
replica loses nothing."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from loraplex.demo.data import make_examples
from tests.integration.conftest import PORT, ROOT, demo_args

pytestmark = pytest.mark.integration
pytest.importorskip("vllm")

APP, PREFIX = "mixed", "/mixed"


@pytest.fixture(scope="module")
def mixed(server, roots):
    """Base URL of config/serve.vllm.yaml's app (the support group on vLLM, with 2 replicas)."""
    from ray import serve

    from loraplex.bench.cluster import wait_healthy
    from loraplex.deployments.app import build_app

    args = demo_args(*roots)
    vllm_args = yaml.safe_load((ROOT / "config" / "serve.vllm.yaml").read_text())["applications"][0]["args"]
    support = {**vllm_args["groups"][0], "autoscaling": {"enabled": False}, "num_replicas": 2}
    support["vllm"] = {**support["vllm"], "composed_cache_count": 8}
    args["groups"][0] = support
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    url = f"http://127.0.0.1:{PORT}{PREFIX}"
    wait_healthy(url, timeout_s=300)
    yield url
    serve.delete(APP)


def _client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


E = make_examples("intent", 1, seed=123, split="heldout")[0]
MODES = [
    ("single", "intent", "support"),
    ("stack", {"mode": "stack", "adapters": ["intent", "sentiment"]}, "support"),
    ("delta blend", {"mode": "blend", "weights": {"intent": 0.7, "sentiment": 0.3}}, "support"),
    ("moe", {"mode": "moe", "top_k": 2, "weights": {"intent": 0.6, "sentiment": 0.4}}, "support"),
    ("logits blend", {"mode": "blend", "space": "logits", "weights": {"intent": 0.6, "sentiment": 0.4}}, "extraction"),
    (
        "chain",
        {
            "mode": "chain",
            "stages": [
                {"adapter": "intent", "prompt": "What is the intent?\n\nMessage: {input}\n\nAnswer:"},
                {"adapter": "sentiment", "prompt": "What is the sentiment?\n\nMessage: {input}\n\nAnswer:"},
            ],
        },
        "support",
    ),
]


@pytest.mark.parametrize("name,comp,group", MODES, ids=[m[0] for m in MODES])
def test_every_mode_answers_as_the_all_native_app_does(server, mixed, name, comp, group):
    """Greedy float32 answers through a vLLM group equal the native engine's (the default app) over HTTP."""
    prompt = E.message if name == "chain" else E.prompt
    ours, ref = (
        _client(url).completions.create(
            model="base", prompt=prompt, max_tokens=32, temperature=0, extra_body={"composition": comp}
        )
        for url in (mixed, server)
    )
    assert ours.model_extra["routing"]["group"] == group
    assert ours.choices[0].text == ref.choices[0].text and ours.usage == ref.usage, (name, ours, ref)


def test_chat_auto_routing_and_streaming_through_vllm(server, mixed):
    e = make_examples("sentiment", 1, seed=7, split="heldout")[0]
    messages = [{"role": "user", "content": e.prompt}]
    ours = _client(mixed).chat.completions.create(model="sentiment", messages=messages, max_tokens=16, temperature=0)
    ref = _client(server).chat.completions.create(model="sentiment", messages=messages, max_tokens=16, temperature=0)
    assert ours.choices[0].message.content == ref.choices[0].message.content
    stream = _client(mixed).completions.create(
        model="auto", prompt=e.prompt, max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    plain = _client(mixed).completions.create(model="auto", prompt=e.prompt, max_tokens=16, temperature=0)
    assert text == plain.choices[0].text and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[0].model_extra["routing"]["group"] == "support"


def test_a_three_adapter_stack_runs_as_one_rank_48_composed_adapter(mixed):
    body = {
        "temperature": 0,
        "model": "base",
        "prompt": E.prompt,
        "composition": {"mode": "stack", "adapters": ["intent", "sentiment", "entities"]},
    }
    r = httpx.post(f"{mixed}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text  # 3 x rank 16 = 48 <= max_lora_rank 64 in serve.vllm.yaml
    assert r.json()["routing"]["group"] == "support"


def _stats(url: str) -> dict:
    return httpx.get(f"{url}/v1/stats", timeout=30).json()["support"]["total"]  # both replicas summed


def test_client_disconnect_aborts_the_vllm_request(mixed):
    body = {
        "temperature": 0,
        "model": "intent",
        "prompt": E.prompt,
        "max_tokens": 120,
        "ignore_eos": True,
        "stream": True,
    }
    cancelled = 0  # nothing before this test cancels on this app
    with httpx.stream("POST", f"{mixed}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        received = 0
        for line in r.iter_lines():
            received += line.startswith("data: ")
            if received == 3:
                break
    deadline = time.time() + 30
    seen = []
    while time.time() < deadline:  # replicas push their stats every second
        s = _stats(mixed)
        seen.append((s["cancelled"], s["inflight"], s["last_batch_size"]))
        if s["cancelled"] > cancelled and s["inflight"] == 0 and s["last_batch_size"] == 0:
            break
        time.sleep(0.3)
    assert any(c > cancelled and i == 0 and b == 0 for c, i, b in seen), seen


def test_logprobs_n_and_json_schema_through_the_openai_client(mixed):
    import json

    import jsonschema

    client = _client(mixed)
    r = client.completions.create(model="intent", prompt=E.prompt, max_tokens=8, temperature=0, logprobs=2, n=2)
    assert len(r.choices) == 2 and r.choices[0].text == r.choices[1].text
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) >= 1
    joined = "".join(lp.tokens)  # the tokens spell the text, then the EOS that stopped it (as vLLM's server lists it)
    assert joined in (r.choices[0].text, r.choices[0].text + "</s>") and all(x <= 0 for x in lp.token_logprobs)
    assert all(
        len(top) <= 2 and max(top.values()) == pytest.approx(t) for top, t in zip(lp.top_logprobs, lp.token_logprobs)
    )
    chat = client.chat.completions.create(
        model="intent",
        messages=[{"role": "user", "content": E.prompt}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert content and all(len(c.top_logprobs) == 3 and c.bytes == list(c.token.encode()) for c in content)
    schema = {
        "type": "object",
        "properties": {"intent": {"type": "string", "enum": ["order_status", "billing", "cancel_order"]}},
        "required": ["intent"],
        "additionalProperties": False,
    }
    out = client.chat.completions.create(
        temperature=0,
        model="intent",
        messages=[{"role": "user", "content": E.prompt}],
        max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "intent", "schema": schema}},
    )
    jsonschema.validate(json.loads(out.choices[0].message.content), schema)


def test_the_same_fields_run_on_the_native_group_of_the_same_app(mixed):
    """logprobs, echo and n on the native group (extraction) beside the vLLM group (support): same shapes."""
    for model, group in (("entities", "extraction"), ("intent", "support")):
        body = {"temperature": 0, "model": model, "prompt": E.prompt, "logprobs": 1, "echo": True, "max_tokens": 4}
        r = httpx.post(f"{mixed}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        (choice,) = out["choices"]
        lp = choice["logprobs"]
        assert out["routing"]["group"] == group and choice["text"].startswith(E.prompt)
        # every prompt token, then every sampled one (an EOS that stopped it included, as vLLM's server does)
        assert len(lp["tokens"]) == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
        assert lp["token_logprobs"][0] is None and all(v <= 0 for v in lp["token_logprobs"][1:])


def test_an_adapter_registered_at_run_time_reaches_the_vllm_group(mixed, roots):
    import shutil

    from tests.integration.conftest import DEMO

    _, imports = roots
    shutil.copytree(DEMO / "adapters" / "intent", imports / "vintent")
    r = httpx.post(
        f"{mixed}/v1/adapters", json={"name": "team/vintent", "source": str(imports / "vintent")}, timeout=60
    )
    assert r.status_code == 201, r.text

    def complete(comp):
        body = {"model": "base", "prompt": E.prompt, "max_tokens": 16, "temperature": 0, "composition": comp}
        return httpx.post(f"{mixed}/v1/completions", json=body, timeout=60).json()

    single, ref = complete("team/vintent"), complete("intent")
    assert single["routing"]["group"] == "support" and single["choices"][0]["text"] == ref["choices"][0]["text"]
    stack = complete({"mode": "stack", "adapters": ["team/vintent", "sentiment"]})  # a composed adapter over it
    assert (
        stack["choices"][0]["text"]
        == complete({"mode": "stack", "adapters": ["intent", "sentiment"]})["choices"][0]["text"]
    )
    assert httpx.delete(f"{mixed}/v1/adapters/team/vintent", timeout=60).status_code == 200
    gone = httpx.post(
        f"{mixed}/v1/completions", json={"temperature": 0, "model": "team/vintent", "prompt": E.prompt}, timeout=60
    )
    assert gone.status_code == 404


def test_killing_a_vllm_replica_under_load_loses_nothing(mixed):
    import ray

    prompts = [e.prompt for e in make_examples("intent", 8, seed=9, split="heldout")]
    outcomes: list[object] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=120) as c:
            n = 0
            while not stop.is_set():
                body = {"temperature": 0, "model": "intent", "prompt": prompts[(i + n) % 8], "max_tokens": 16}
                try:
                    outcomes.append(c.post(f"{mixed}/v1/completions", json=body).status_code)
                except httpx.HTTPError as e:
                    outcomes.append(repr(e))
                n += 1

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, i) for i in range(4)]
        try:
            time.sleep(4)
            victim = next(
                a
                for a in ray.util.list_named_actors(all_namespaces=True)
                if APP in a["name"] and "expert_support" in a["name"]
            )
            ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
            time.sleep(8)
        finally:
            stop.set()
            for f in futures:
                f.result()
    counts = {str(o): outcomes.count(o) for o in set(map(str, outcomes))}
    assert outcomes and all(o in (200, 503) for o in outcomes), counts
    assert outcomes.count(200) >= 0.8 * len(outcomes), counts
    from ray import serve

    deadline = time.time() + 180
    while time.time() < deadline:
        states = serve.status().applications[APP].deployments["expert_support"].replica_states
        if states.get("RUNNING", 0) == 2:
            break
        time.sleep(2)
    assert serve.status().applications[APP].deployments["expert_support"].replica_states.get("RUNNING") == 2
