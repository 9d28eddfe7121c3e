"""One real local Ray cluster + one Serve app (the demo) per test session, reached over real HTTP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEMO = Path(os.environ.get("LORAPLEX_DEMO_DIR", ROOT / "models" / "demo"))
PORT = int(os.environ.get("LORAPLEX_TEST_PORT", "18123"))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Short metric intervals so autoscaling reacts within a test (must be set before the cluster starts).
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")


def ensure_demo() -> Path:
    """Build the demo model, adapters and router if missing (the same steps as `make demo`)."""
    from loraplex.demo.build import build_demo, demo_is_built

    if not demo_is_built(DEMO):
        build_demo(DEMO, progress=False)
    if not (DEMO / "router" / "router.json").is_file():
        from loraplex.demo.router_training import train_demo_router
        from loraplex.router.featurizers import SentenceFeaturizer

        # the same featurizer as scripts/train_router.py's defaults
        train_demo_router(DEMO / "router", SentenceFeaturizer(num_layers=4), progress=False)
    return DEMO


def demo_args(managed: Path, imports: Path) -> dict:
    """config/serve.yaml's args, plus a managed root and an import root for run-time registration."""
    args = yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())["applications"][0]["args"]
    args["base_model"] = str(DEMO / "base")
    args["adapter_roots"] = [str(managed), str(DEMO / "adapters")]
    args["import_roots"] = [str(imports)]
    for g in args["groups"]:  # fixed replica counts unless a test turns autoscaling on
        g["autoscaling"] = {"enabled": False}
    args["routing"]["router_path"] = str(DEMO / "router")
    return args


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=300 * 2**20,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def roots(tmp_path_factory):
    """(managed root, import root) for run-time adapter registration."""
    base = tmp_path_factory.mktemp("adapter_roots")
    (base / "managed").mkdir()
    (base / "imports").mkdir()
    return base / "managed", base / "imports"


@pytest.fixture(scope="session")
def server(ray_cluster, roots):
    """Base URL of the demo app on a real Serve HTTP proxy."""
    from ray import serve

    from loraplex.deployments.app import build_app

    ensure_demo()
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(build_app(demo_args(*roots)), name="loraplex", route_prefix="/")
    url = f"http://127.0.0.1:{PORT}"
    from loraplex.bench.cluster import wait_healthy

    wait_healthy(url, timeout_s=120)  # raises naming the URL instead of yielding an app that never came up
    yield url
    serve.shutdown()
