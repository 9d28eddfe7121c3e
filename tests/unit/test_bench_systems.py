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
