"""The two systems the serving benchmark compares, how each is deployed and how a request reaches it.

  loraplex   loraplex.deployments.app:build_app, one expert group holding every adapter, POST /loraplex/v1/completions
  baseline   loraplex.bench.baseline_multiplexed, @serve.multiplexed PEFT, POST /baseline/v1/completions with the
             adapter in the `serve_multiplexed_model_id` header (Serve's own routing)

Both get one model replica with the same CPUs and the same admission limits, so the comparison is about
batching across adapters, not about resources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYSTEMS = ("loraplex", "baseline")
LABELS = {"loraplex": "loraplex (as shipped)", "baseline": "@serve.multiplexed PEFT baseline"}


@dataclass(frozen=True)
class DeploySpec:
    """Deployment knobs; the same for both systems unless the field says otherwise."""

    rank: int  # loraplex max_rank (the adapters' rank)
    targets: tuple[str, ...]  # loraplex target_modules
    replica_cpus: float  # num_cpus of each system's model replica
    ingress_cpus: float  # loraplex router ingress only (the baseline has no separate ingress)
    ingress_max_ongoing: int  # loraplex ingress_max_ongoing_requests; 0 = the config default
    max_batch_size: int  # loraplex group max_batch_size
    batch_wait_s: float  # loraplex group batch_wait_timeout_s
    max_ongoing: int  # max_ongoing_requests of each model replica
    max_queued: int  # max_queued_requests of each model deployment
    baseline_max_models: int | None  # baseline max_num_models_per_replica; None = every adapter (no eviction)
    max_tokens: int  # tokens per request: loraplex's max_tokens_limit must allow it


def request_for(system: str, base_url: str, adapter: str, prompt: list[int], max_tokens: int) -> tuple[str, dict, dict]:
    """(url, JSON body, headers) of one greedy completion of exactly `max_tokens` tokens for `system`."""
    body = {"model": adapter, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    if system == "baseline":
        return f"{base_url}/baseline/v1/completions", body, {"serve_multiplexed_model_id": adapter}
    return f"{base_url}/{system}/v1/completions", body, {}


def loraplex_app_args(spec: DeploySpec, base_dir: Path, ad_dir: Path, names: list[str]) -> dict:
    """build_app args: one group `all` with every adapter resident (max_slots = max_host_adapters = len(names))."""
    args = {
        "base_model": str(base_dir),
        "adapter_roots": [str(ad_dir)],
        "device": "cpu",
        "dtype": "float32",
        "max_rank": spec.rank,
        "target_modules": list(spec.targets),
        "ingress_num_cpus": spec.ingress_cpus,
        "limits": {
            "max_tokens_limit": max(256, spec.max_tokens),
            "default_max_tokens": min(64, max(256, spec.max_tokens)),
        },
        "groups": [
            {
                "name": "all",
                "adapters": names,
                "num_replicas": 1,
                "resources": {"num_cpus": spec.replica_cpus},
                "max_batch_size": spec.max_batch_size,
                "batch_wait_timeout_s": spec.batch_wait_s,
                "max_ongoing_requests": max(spec.max_ongoing, spec.max_batch_size),
                "max_queued_requests": spec.max_queued,
                "max_slots": len(names),
                "max_host_adapters": len(names),
            }
        ],
    }
    if spec.ingress_max_ongoing:
        args["ingress_max_ongoing_requests"] = spec.ingress_max_ongoing
    return args


def baseline_app_args(spec: DeploySpec, base_dir: Path, ad_dir: Path, names: list[str]) -> dict:
    """build_baseline args: the same replica CPUs and admission limits as loraplex's expert group."""
    return {
        "base_model": str(base_dir),
        "adapter_roots": [str(ad_dir)],
        "max_models": spec.baseline_max_models or len(names),
        "num_cpus": spec.replica_cpus,
        "max_ongoing_requests": spec.max_ongoing,
        "max_queued_requests": spec.max_queued,
    }


def deploy_systems(spec: DeploySpec, base_dir: Path, ad_dir: Path, names: list[str]) -> dict:
    """serve.run every system under /<name> on the running Serve instance; loraplex's app args (for the report)."""
    from ray import serve

    from loraplex.bench.baseline_multiplexed import build_baseline
    from loraplex.deployments.app import build_app

    lp_args = loraplex_app_args(spec, base_dir, ad_dir, names)
    serve.run(build_app(lp_args), name="loraplex", route_prefix="/loraplex")
    serve.run(
        build_baseline(baseline_app_args(spec, base_dir, ad_dir, names)), name="baseline", route_prefix="/baseline"
    )
    return lp_args
