"""The GPU check's in-memory benchmark, run on CPU at a tiny shape: it builds, times every config, and our
engine's greedy tokens equal PEFT's on the same in-memory adapters (GQA included)."""

from __future__ import annotations

from loraplex.bench.device_bench import DeviceBenchSpec, run_device_bench


def test_in_memory_bench_runs_and_matches_peft_on_cpu():
    spec = DeviceBenchSpec(
        hidden=64,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate=128,
        vocab=300,
        adapters=4,
        batch=4,
        prompt_tokens=8,
        new_tokens=4,
        device="cpu",
        dtype="float32",
        repeats=1,
        compile=False,
    )
    report = run_device_bench(spec, progress=lambda m: None)
    assert set(report["results"]) == {
        "base_only",
        "peft_mixed_batch",
        "loraplex_base_eager",
        "loraplex_distinct_eager",
        "loraplex_top2_blend_eager",
    }
    assert all(r["tok_per_s"] > 0 for r in report["results"].values())
    assert report["greedy_rows_equal_to_peft"] == 1.0
    assert report["compile_errors"] == {}
