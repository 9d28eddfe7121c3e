"""The serving benchmark deploys what the app's own config accepts, with the two systems on equal resources."""

from __future__ import annotations

from pathlib import Path

from loraplex.bench.fixtures import adapter_names
from loraplex.bench.systems import DeploySpec, baseline_app_args, loraplex_app_args
from loraplex.config.app import AppArgs

SPEC = DeploySpec(
    rank=16,
    targets=("q_proj", "v_proj"),
    replica_cpus=0.5,
    ingress_cpus=0.1,
    ingress_max_ongoing=0,
    max_batch_size=32,
    batch_wait_s=0.01,
    max_ongoing=64,
    max_queued=256,
    baseline_max_models=None,
    max_tokens=16,
)


def test_loraplex_args_validate_and_keep_every_adapter_resident():
    names = adapter_names(4)
    args = loraplex_app_args(SPEC, Path("/b"), Path("/a"), names)
    assert "ingress_max_ongoing_requests" not in args  # 0 = the config default
    group = AppArgs(**args).groups[0]
    assert list(group.adapters) == names == ["a0", "a1", "a2", "a3"]
    assert (group.max_slots, group.max_host_adapters, group.num_replicas, group.resources.num_cpus) == (4, 4, 1, 0.5)


def test_baseline_gets_the_same_replica_and_admission_limits():
    lp = loraplex_app_args(SPEC, Path("/b"), Path("/a"), adapter_names(4))["groups"][0]
    bl = baseline_app_args(SPEC, Path("/b"), Path("/a"), adapter_names(4))
    assert bl["num_cpus"] == lp["resources"]["num_cpus"] and bl["max_queued_requests"] == lp["max_queued_requests"]
    assert bl["max_models"] == 4  # no eviction unless --baseline-max-models says so


def test_vllm_server_and_the_vllm_group_get_the_same_engine_sizes():
    from loraplex.bench.systems import loraplex_vllm_app_args
    from loraplex.bench.vllm_server import server_command, server_env

    names = adapter_names(4)
    cmd = server_command(SPEC, Path("/b"), Path("/a"), names, 9)
    flag = lambda f: cmd[cmd.index(f) + 1]  # noqa: E731
    group = AppArgs(**loraplex_vllm_app_args(SPEC, Path("/b"), Path("/a"), names)).groups[0]
    opts = group.vllm_options
    assert group.engine == "vllm" and list(group.adapters) == names
    assert (flag("--max-loras"), flag("--max-cpu-loras"), flag("--max-lora-rank"), flag("--max-num-seqs")) == (
        str(opts.max_loras),
        str(opts.max_cpu_loras),
        str(opts.max_lora_rank),
        str(opts.max_num_seqs),
    )
    assert cmd[cmd.index("--lora-modules") + 1 : cmd.index("--lora-modules") + 5] == [f"{n}=/a/{n}" for n in names]
    env = server_env(SPEC)
    assert (env["VLLM_CPU_KVCACHE_SPACE"], env["VLLM_CPU_OMP_THREADS_BIND"]) == (
        str(opts.cpu_kvcache_space_gb),
        opts.cpu_threads_bind,
    )


def test_one_dtype_for_every_system():
    from dataclasses import replace

    from loraplex.bench.systems import loraplex_vllm_app_args
    from loraplex.bench.vllm_server import server_command

    spec = replace(SPEC, dtype="bfloat16", native_threads=2)
    names = adapter_names(2)
    cmd = server_command(spec, Path("/b"), Path("/a"), names, 9)
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert cmd[cmd.index("--served-model-name") + 1] == "base"  # the base model's name in loraplex too
    assert AppArgs(**loraplex_app_args(spec, Path("/b"), Path("/a"), names)).dtype == "bfloat16"
    assert (
        AppArgs(**loraplex_vllm_app_args(spec, Path("/b"), Path("/a"), names)).groups[0].vllm_options.dtype
        == "bfloat16"
    )
    assert (
        AppArgs(**loraplex_app_args(spec, Path("/b"), Path("/a"), names))
        .groups[0]
        .engine_config(AppArgs(**loraplex_app_args(spec, Path("/b"), Path("/a"), names)))
        .threads
        == 2
    )  # the native replica on as many threads as vLLM's two bound cores
