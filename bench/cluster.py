"""A fresh local Ray cluster with a Serve HTTP proxy on 127.0.0.1, for the benchmark, soak and chaos scripts.

`wait_healthy` is the one "poll until the app answers" loop: `serve.run` returns once the deployments exist,
not once the HTTP proxy routes to them, so every caller (these scripts and the integration tests' `server`
fixture) polls a health route before sending load.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import yaml


def wait_healthy(
    base_url: str, paths: Iterable[str] = ("/health",), timeout_s: float = 120.0, poll_s: float = 0.5
) -> None:
    """Block until GET `base_url + path` answers 200 for every path in turn, all within one `timeout_s` deadline.

    Raises RuntimeError naming the URL that never became healthy, how long was waited and the last answer
    (status code or connection error), so a failed start says where to look instead of failing later as a
    wall of connection errors.
    """
    import httpx

    start = time.monotonic()
    deadline = start + timeout_s
    for path in paths:
        url = f"{base_url}{path}"
        last = "no answer yet"
        while True:
            try:
                r = httpx.get(url, timeout=5)
                if r.status_code == 200:
                    break
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = type(e).__name__
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{url} not healthy after waiting {time.monotonic() - start:.1f} s (last: {last})")
            time.sleep(poll_s)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether `port` can be bound on `host` now: checked first, so a busy port fails fast, not after the build."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def start_local_cluster(port: int, num_cpus: float, **ray_init_kwargs) -> str:
    """ray.init a new local cluster (no dashboard, no driver logs), serve.start on 127.0.0.1:`port`; the base URL."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, **ray_init_kwargs)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def start_local_app(
    config: Path, port: int, overrides: dict | None = None, app_name: str = "loraplex", num_cpus: int = 4
) -> str:
    """Start a local cluster and serve.run the first application of a Serve YAML; returns the base URL when healthy."""
    from ray import serve

    from loraplex.deployments.app import build_app

    args = yaml.safe_load(Path(config).read_text())["applications"][0]["args"]
    args.update(overrides or {})
    url = start_local_cluster(port, num_cpus)
    serve.run(build_app(args), name=app_name, route_prefix="/")
    wait_healthy(url)
    return url


def stop_local_app() -> None:
    """serve.shutdown then ray.shutdown, best effort: a failing Serve shutdown must not leave the cluster running."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    except Exception as e:  # noqa: BLE001 - keep shutting down
        print(f"serve.shutdown: {e}", file=sys.stderr)
    if ray.is_initialized():
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
