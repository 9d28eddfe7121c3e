"""The open-loop load client's bookkeeping, and one rate step against an in-process fake server (no Ray, no sockets)."""

from __future__ import annotations

import asyncio
import json

import httpx

from loraplex.bench.load import latency_ms, run_step, server_delta, step_order, step_stats
from loraplex.bench.systems import ALL_SYSTEMS, SYSTEMS, mix_composition, request_for, system_urls
from loraplex.bench.workloads import Arrival


def test_latency_ms():
    assert latency_ms([]) == dict.fromkeys(("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms"))  # None, not NaN
    out = latency_ms([0.1 * i for i in range(1, 11)])
    assert out == {"p50_ms": 550.0, "p90_ms": 910.0, "p99_ms": 991.0, "mean_ms": 550.0, "max_ms": 1000.0}


def test_step_stats_counts_errors_and_divides_by_the_drain_span():
    t0 = 100.0
    results = [{"ok": True, "lat": 0.2, "done": t0 + 1.0, "tokens": 16} for _ in range(8)]
    results += [{"ok": True, "lat": 3.0, "done": t0 + 4.0, "tokens": 16}]  # backlog drains 2 s after the last arrival
    results += [
        {"ok": False, "kind": "http_503", "lat": 0.01, "done": t0 + 1.0},
        {"ok": False, "kind": "timeout", "lat": 30, "done": t0 + 3},
    ]
    st = step_stats(results, rate=5.0, window=2.0, t0=t0)
    assert (st["sent"], st["completed"], st["errors"], st["error_kinds"]) == (11, 9, 2, {"http_503": 1, "timeout": 1})
    assert st["span_s"] == 4.0 and st["achieved_rps"] == 2.25 and st["tokens_per_s"] == 36.0
    assert st["offered_actual_rps"] == 5.5 and st["error_rate"] == round(2 / 11, 4)
    assert st["max_ms"] == 3000.0


def test_server_delta():
    before = {"all": {"requests": 10, "batches": 4, "rows": 10, "tokens": 160}}
    after = {"all": {"requests": 30, "batches": 9, "rows": 30, "tokens": 480}}
    assert server_delta("loraplex", before, after) == {
        "requests": 20,
        "batches": 5,
        "rows": 20,
        "tokens": 320,
        "mean_batch": 4.0,
    }
    assert server_delta("baseline", {"requests": 1, "loads": 2}, {"requests": 5, "loads": 2}) == {
        "requests": 4,
        "loads": 0,
    }


def test_step_order_starts_with_the_baseline_then_rotates():
    assert step_order(0)[0] == "baseline"
    orders = [step_order(i) for i in range(len(SYSTEMS))]
    assert all(sorted(o) == sorted(SYSTEMS) for o in orders)
    assert len({o[0] for o in orders}) == len(SYSTEMS)  # every system goes first once per cycle


def test_request_for_routes_the_baseline_by_header():
    urls = system_urls("http://h", "http://v:9", ALL_SYSTEMS)
    url, body, headers = request_for("baseline", urls["baseline"], "a3", [5, 6], 16, stream=True)
    assert url == "http://h/baseline/v1/completions" and headers == {"serve_multiplexed_model_id": "a3"}
    assert body == {"model": "a3", "prompt": [5, 6], "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    assert request_for("loraplex", urls["loraplex"], "a3", [5], 16)[0] == "http://h/loraplex/v1/completions"
    url, body, _ = request_for("vllm-server", urls["vllm-server"], "a3", [5], 16, stream=True)
    assert url == "http://v:9/v1/completions" and body["stream"] and body["stream_options"] == {"include_usage": True}
    assert urls["loraplex-vllm-mix"] == urls["loraplex-vllm"] == "http://h/loraplex-vllm"


def test_the_mix_is_half_single_three_tenths_blend_one_fifth_stack():
    names = [f"a{i}" for i in range(8)]
    kinds = []
    for i in range(1000):
        prompt = [i, 3, 5]
        _, body, _ = request_for("loraplex-vllm-mix", "http://h/loraplex-vllm", names[i % 8], prompt, 4, names=names)
        comp = body["composition"]
        kinds.append(comp["mode"] if isinstance(comp, dict) else "single")
        again = request_for("loraplex-vllm-mix", "http://h/x", names[i % 8], prompt, 4, names=names)[1]
        assert again["composition"] == comp  # fixed by the request: every run sends the same mix
    assert (kinds.count("single"), kinds.count("blend"), kinds.count("stack")) == (500, 300, 200)
    assert mix_composition("a7", names, [6]) == {"mode": "blend", "weights": {"a7": 0.6, "a0": 0.4}}


def test_run_step_against_a_fake_server():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v1/stats"):
            return httpx.Response(200, json={"requests": len(seen)})
        body = json.loads(request.content)
        seen.append((request.headers.get("serve_multiplexed_model_id"), body["model"]))
        if body["model"] == "bad":
            return httpx.Response(503)
        return httpx.Response(200, json={"usage": {"completion_tokens": body["max_tokens"]}})

    work = [Arrival(0.01 * i, "bad" if i == 3 else f"a{i}", [5, 6]) for i in range(5)]

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await run_step(client, "baseline", "http://fake/baseline", 50.0, work, max_tokens=4, timeout=5)

    st = asyncio.run(go())
    assert [m for m, _ in seen] == [w.adapter for w in work]  # every arrival sent, in order, with the routing header
    assert (st["system"], st["sent"], st["completed"], st["error_kinds"]) == ("baseline", 5, 4, {"http_503": 1})
    assert st["tokens_per_s"] > 0 and st["achieved_rps"] > 0
    assert st["server"] == {"requests": 5} and st["p99_ms"] is not None


def test_vllm_bench_command_and_its_result_as_a_step(tmp_path):
    from loraplex.bench.verdict import Criteria
    from loraplex.bench.vllm_bench import bench_command, step_record

    cmd = bench_command(
        "http://h/app",
        "/m",
        ["a0", "a1"],
        rate=4.0,
        num_prompts=40,
        prompt_tokens=32,
        max_tokens=16,
        seed=3,
        result=tmp_path / "r.json",
        stream=False,
    )
    assert cmd[1:5] == ["-m", "loraplex.bench.vllm_cli", "bench", "serve"]
    flags = dict(zip(cmd[5::1], cmd[6::1]))
    assert (flags["--base-url"], flags["--request-rate"], flags["--num-prompts"]) == ("http://h/app", "4.0", "40")
    assert (flags["--random-input-len"], flags["--random-output-len"], flags["--served-model-name"]) == (
        "32",
        "16",
        "base",
    )
    assert cmd[cmd.index("--lora-modules") + 1 :][:2] == ["a0", "a1"] and "--no-stream" in cmd and "--ignore-eos" in cmd
    out = {
        "completed": 38,
        "failed": 2,
        "duration": 10.0,
        "request_throughput": 3.8,
        "output_throughput": 60.8,
        "median_e2el_ms": 400.0,
        "p99_e2el_ms": 900.0,
        "median_ttft_ms": 80.0,
        "p99_ttft_ms": 200.0,
        "median_tpot_ms": 20.0,
        "p99_tpot_ms": 40.0,
    }
    st = step_record("loraplex", 4.0, out)
    assert (st["sent"], st["error_rate"], st["achieved_rps"], st["p99_ms"], st["tpot_p50_ms"]) == (
        40,
        0.05,
        3.8,
        900.0,
        20.0,
    )
    assert Criteria(1000.0, 0.1, 0.9).passes(st) and not Criteria(800.0, 0.1, 0.9).passes(st)
