"""Start the app from a Serve YAML on a fresh local Ray cluster (scripts: soak, chaos, benchmarks)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml


def start_local_app(config: Path, port: int, overrides: dict | None = None, app_name: str = "loraplex", num_cpus: int = 4) -> str:
    """ray.init + serve.start + serve.run of the config's first application; returns the base URL when healthy."""
    import httpx
    import ray
    from ray import serve

    from loraplex.deployments.app import build_app

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = yaml.safe_load(Path(config).read_text())["applications"][0]["args"]
    args.update(overrides or {})
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name=app_name, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"app did not become healthy at {url}")


def stop_local_app() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def serve_processes_rss_mb() -> dict[str, float]:
    """RSS (MiB) of every Ray worker process on this machine, keyed by its process title."""
    import psutil

    out: dict[str, float] = {}
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::") and p.info["memory_info"] is not None:
            key = cmd.split()[0]
            out[key] = out.get(key, 0.0) + p.info["memory_info"].rss / 2**20
    return out
