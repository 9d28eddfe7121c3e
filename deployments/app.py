"""`build_app(args)`: the Serve application builder named in config/serve*.yaml
(`loraplex.deployments.app:build_app`)."""

from __future__ import annotations

from pathlib import Path

from ray.serve import Application

from loraplex.config.app import AppArgs
from loraplex.deployments.expert import ExpertDeployment
from loraplex.deployments.ingress import RouterIngress
from loraplex.deployments.metrics_board import MetricsBoard

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
    cfg = cfg.model_copy(
        update={
            "base_model": _absolute(cfg.base_model),
            "adapter_roots": [_absolute(r) for r in cfg.adapter_roots],
            "import_roots": [_absolute(r) for r in cfg.import_roots],
            "routing": cfg.routing.model_copy(update={"router_path": _absolute(cfg.routing.router_path)}),
        }
    )
    board = MetricsBoard.bind()
    experts = {
        g.name: ExpertDeployment.options(**g.serve_options()).bind(
            g.name,
            g.engine_config(cfg).model_dump(),
            list(g.adapters),
            g.max_batch_size,
            g.batch_wait_timeout_s,
            g.vllm_options.model_dump() if g.engine == "vllm" else None,
            board,
        )
        for g in cfg.groups
    }
    ingress = RouterIngress.options(
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=cfg.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
    )
    return ingress.bind(cfg.model_dump(), experts, board)
