"""`build_app(args)`: the Serve application builder named in config/serve*.yaml (`loraplex.deployments.app:build_app`)."""

from __future__ import annotations

from pathlib import Path

from ray.serve import Application

from loraplex.config.app import AppArgs
from loraplex.deployments.expert import ExpertDeployment
from loraplex.deployments.ingress import RouterIngress


def expert_deployment_name(group: str) -> str:
    return f"expert_{group}"


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _absolute(path: str | None) -> str | None:
    """Relative paths in a Serve YAML mean the launch directory, else the project root; replicas get absolute ones."""
    if path is None or Path(path).is_absolute():
        return path
    for base in (Path.cwd(), PROJECT_ROOT):
        if (base / path).exists():
            return str((base / path).resolve())
    return str((Path.cwd() / path).resolve())


def build_app(args: dict) -> Application:
    cfg = AppArgs(**args)  # validates exactly as applications[].args must
    cfg = cfg.model_copy(update={
        "base_model": _absolute(cfg.base_model), "adapter_roots": [_absolute(r) for r in cfg.adapter_roots],
        "import_roots": [_absolute(r) for r in cfg.import_roots],
        "routing": cfg.routing.model_copy(update={"router_path": _absolute(cfg.routing.router_path)})})
    experts = {}
    for g in cfg.groups:
        engine = {"base_model": cfg.base_model, "adapter_roots": cfg.adapter_roots, "max_slots": g.max_slots, "max_host_adapters": g.max_host_adapters,
                  "max_rank": cfg.max_rank, "target_modules": cfg.target_modules, "device": cfg.device, "dtype": cfg.dtype, "max_batch_rows": max(64, 4 * g.max_batch_size)}
        actor = {"num_cpus": g.resources.num_cpus, "num_gpus": g.resources.num_gpus}
        if g.resources.memory_gb:
            actor["memory"] = int(g.resources.memory_gb * 2**30)
        scaling = {"num_replicas": g.num_replicas}
        a = g.autoscaling
        if a.enabled:
            kwargs = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas, "target_load": a.target_load, "upscale_threshold": a.upscale_threshold,
                      "downscale_threshold": a.downscale_threshold, "upscale_delay_s": a.upscale_delay_s, "downscale_delay_s": a.downscale_delay_s,
                      "scale_to_zero_delay_s": a.scale_to_zero_delay_s}
            scaling = {"autoscaling_config": {
                "min_replicas": a.min_replicas, "max_replicas": a.max_replicas, "initial_replicas": max(a.min_replicas, min(g.num_replicas, a.max_replicas)),
                # Delays live in the policy (kwargs); Serve's own delays would demand the same answer on every tick
                # for the whole delay, which a stepwise policy never gives, so they are zero here.
                "target_ongoing_requests": a.target_load, "upscale_delay_s": 0, "downscale_delay_s": 0,
                "downscale_to_zero_delay_s": 0, "look_back_period_s": a.look_back_period_s,
                "policy": {"policy_function": "loraplex.deployments.autoscaling:ExpertGroupPolicy", "policy_kwargs": kwargs}}}
        experts[g.name] = ExpertDeployment.options(
            name=expert_deployment_name(g.name), ray_actor_options=actor, **scaling,
            max_ongoing_requests=g.max_ongoing_requests, max_queued_requests=g.max_queued_requests,
        ).bind(engine, list(g.adapters), g.max_batch_size, g.batch_wait_timeout_s)
    return RouterIngress.options(num_replicas=cfg.ingress_replicas, max_ongoing_requests=cfg.ingress_max_ongoing_requests,
                                 ray_actor_options={"num_cpus": cfg.ingress_num_cpus}).bind(cfg.model_dump(), experts)
