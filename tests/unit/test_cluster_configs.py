"""config/cluster/*.yaml: the KubeRay RayService (with its embedded Serve config) and the Ray cluster launcher."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from loraplex.config.app import AppArgs

CLUSTER = Path(__file__).resolve().parents[2] / "config" / "cluster"


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "rayservice.yaml").read_text()) if d]


@pytest.fixture(scope="module")
def rayservice(manifests) -> dict:
    (rs,) = [d for d in manifests if d.get("kind") == "RayService"]
    return rs


@pytest.fixture(scope="module")
def serve_config(rayservice) -> dict:
    text = rayservice["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 must be a YAML string"
    return yaml.safe_load(text)


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def _gpus(container: dict) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def _gpu_groups(rayservice) -> list[dict]:
    groups = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return [g for g in groups if any(_gpus(c) for c in _containers(g["template"]))]


def test_rayservice_shape(rayservice):
    assert rayservice["apiVersion"] == "ray.io/v1"
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == version("ray")  # the image must run the Ray this project pins
    head = cluster["headGroupSpec"]
    assert all(_gpus(c) == 0 for c in _containers(head["template"])), "the head group is CPU only"
    gpu_names = {g["groupName"] for g in _gpu_groups(rayservice)}
    pods = [(None, head)] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    for group, spec in pods:
        for c in _containers(spec["template"]):
            # a pinned tag in a registry, pulled once: `:latest` is always pulled and names no registry
            image, tag = c["image"].rsplit(":", 1)
            assert "/" in image and "." in image.split("/")[0] and tag != "latest", c["image"]
            assert c["imagePullPolicy"] == "IfNotPresent"
            assert tag.endswith("-gpu") == (group in gpu_names), (group, c["image"])  # Dockerfile targets gpu / cpu
    assert cluster["authOptions"] == {"mode": "token"}  # dashboard and Jobs API are not open


def _gib(q: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}
    for u, f in units.items():
        if q.endswith(u):
            return float(q[: -len(u)]) * f
    return float(q) / 2**30


def test_gpu_pods_fit_the_nodes_and_the_starting_replicas(rayservice, serve_config):
    """cluster.yaml's GPU nodes (g5.4xlarge) have 64 GiB, less of it allocatable; and the groups' starting
    replicas (one GPU pod each) must fit the gpu-workers' starting pods, or Serve waits on the autoscaler."""
    for g in _gpu_groups(rayservice):
        for c in _containers(g["template"]):
            assert _gib(c["resources"]["requests"]["memory"]) <= 58, c["resources"]
            assert _gib(c["resources"]["limits"]["memory"]) <= 58
    args = AppArgs(**serve_config["applications"][0]["args"])
    starting = sum(max(g.num_replicas, g.autoscaling.min_replicas) for g in args.groups)
    assert sum(g["replicas"] for g in _gpu_groups(rayservice)) >= starting
    assert sum(g["minReplicas"] for g in _gpu_groups(rayservice)) == sum(
        g.autoscaling.min_replicas for g in args.groups
    )


def test_the_secret_it_mounts_is_created_by_the_documented_command(rayservice):
    """The manifest does not define `loraplex-keys` (keys never go in a manifest); its header's kubectl command
    must create that Secret with every key the pods read."""
    text = (CLUSTER / "rayservice.yaml").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    used: dict[str, set[str]] = {}
    cluster = rayservice["spec"]["rayClusterConfig"]
    for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = spec["template"]["spec"]
        for v in pod.get("volumes", []):
            if "secret" in v:
                used.setdefault(v["secret"]["secretName"], set()).update(i["key"] for i in v["secret"].get("items", []))
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.setdefault(ref["name"], set()).add(ref["key"])
    assert used
    for name, keys in used.items():
        m = re.search(rf"kubectl create secret generic {name} (.+?)(\n#\s*[^ -]|$)", header.replace("\\\n#", ""), re.S)
        assert m, f"no documented command creates Secret {name}"
        for key in keys:
            assert f"--from-literal={key}=" in m.group(1), (name, key)


def test_every_application_args_validate_as_app_args(serve_config):
    apps = serve_config["applications"]
    assert apps
    for app in apps:
        assert app["import_path"] == "loraplex.deployments.app:build_app"
        AppArgs(**app["args"])


def test_the_serve_config_passes_rays_own_schema(serve_config):
    schema = pytest.importorskip("ray.serve.schema")
    from ray.serve.config import AutoscalingPolicy

    schema.ServeDeploySchema(**serve_config)
    for app in serve_config["applications"]:
        if app.get("autoscaling_policy"):
            AutoscalingPolicy(**app["autoscaling_policy"])  # what Serve builds from it (application_state.py)


def test_gpu_worker_groups_request_gpus_within_bounds(rayservice):
    gpu_groups = _gpu_groups(rayservice)
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    for g in gpu_groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for c in _containers(g["template"]):
            assert _gpus(c) >= 1
            assert int(c["resources"]["requests"]["nvidia.com/gpu"]) == _gpus(c)


def test_every_expert_group_needs_a_gpu_and_autoscales_inside_the_budget(rayservice, serve_config):
    from loraplex.deployments.autoscaling import AppBudgetPolicy

    max_gpus = sum(
        g["maxReplicas"] * max(_gpus(c) for c in _containers(g["template"])) for g in _gpu_groups(rayservice)
    )
    for app in serve_config["applications"]:
        args = AppArgs(**app["args"])
        for g in args.groups:
            assert g.resources.num_gpus > 0, g.name
            assert g.autoscaling.enabled, g.name
        policy = app["autoscaling_policy"]
        assert policy["policy_function"] == "loraplex.deployments.autoscaling:AppBudgetPolicy"
        budget = AppBudgetPolicy(**policy.get("policy_kwargs", {})).budget
        assert sum(g.autoscaling.min_replicas for g in args.groups) <= budget <= max_gpus


def test_shared_volume_is_mounted_at_mnt_in_every_pod(manifests, rayservice):
    claims = {d["metadata"]["name"] for d in manifests if d.get("kind") == "PersistentVolumeClaim"}
    assert claims
    cluster = rayservice["spec"]["rayClusterConfig"]
    for spec in [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]:
        pod = spec["template"]["spec"]
        vols = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "/mnt" in mounts
            assert vols[mounts["/mnt"]]["persistentVolumeClaim"]["claimName"] in claims
        assert (
            "ReadWriteMany"
            in next(d for d in manifests if d.get("kind") == "PersistentVolumeClaim")["spec"]["accessModes"]
        )


def test_serve_paths_live_on_the_shared_volume(serve_config):
    for app in serve_config["applications"]:
        args = AppArgs(**app["args"])
        paths = [args.base_model, *args.adapter_roots, *args.import_roots] + (
            [args.routing.router_path] if args.routing.router_path else []
        )
        assert all(p.startswith("/mnt/") for p in paths), paths


def test_cluster_launcher_config():
    c = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    assert c["provider"]["type"] == "aws" and c["provider"]["region"]
    types = c["available_node_types"]
    assert c["head_node_type"] in types
    assert not types[c["head_node_type"]].get("resources", {}).get("GPU"), "the head is CPU only"
    gpu_types = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types, "no worker node type offers a GPU"
    for t in gpu_types:
        assert 0 <= t["min_workers"] <= t["max_workers"]
    workers = [t for n, t in types.items() if n != c["head_node_type"]]
    assert sum(t["max_workers"] for t in workers) <= c["max_workers"]
    setup = " ; ".join(c["setup_commands"])
    assert "pip install -r requirements-gpu.txt && pip install -e ." in setup  # GPU nodes: CUDA torch + vLLM
    assert "/mnt" in setup  # the shared filesystem


def test_every_metric_has_a_dashboard_panel():
    """A metric nobody can see is a metric nobody watches: each `loraplex_*` name in observability/metrics.py
    appears in a panel query of config/grafana/loraplex.json (the other direction, every query against a real
    scrape: tests/integration/test_observability_http.py)."""
    import re

    root = Path(__file__).resolve().parents[2]
    names = set(re.findall(r'"(loraplex_[a-z_]+)"', (root / "observability" / "metrics.py").read_text()))
    exprs = " ".join(
        t["expr"]
        for p in json.loads((root / "config" / "grafana" / "loraplex.json").read_text())["panels"]
        for t in p.get("targets", [])
    )
    assert len(names) >= 10
    missing = sorted(n for n in names if not re.search(rf"\b{n}(_total|_bucket|_sum|_count)?\b", exprs))
    assert not missing, f"metrics without a dashboard panel: {missing}"
