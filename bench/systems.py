"""The systems the serving benchmark compares, how each is deployed and how a request reaches it.

  loraplex           loraplex.deployments.app:build_app, one native expert group holding every adapter,
                     POST /loraplex/v1/completions
  baseline           loraplex.bench.baseline_multiplexed, @serve.multiplexed PEFT, POST /baseline/v1/completions
                     with the adapter in the `serve_multiplexed_model_id` header (Serve's own routing)
  vllm-server        vLLM's own OpenAI server (`--enable-lora`, every adapter as a --lora-modules entry), in a
                     process of its own: what a user would run instead of us (bench/vllm_server.py)
  loraplex-vllm      our app with one `engine: vllm` group holding every adapter, POST /loraplex-vllm/v1/...,
                     one adapter per request (the same requests as vllm-server)
  loraplex-vllm-mix  the same app, with 50 % single adapters, 30 % top-2 delta blends and 20 % two-adapter
                     stacks (each blend/stack is a composed adapter; see `mix_composition`)

Each gets one model replica with the same CPUs and the same admission limits, so the comparison is about
batching across adapters (and, for the vLLM pair, the cost of our layers), not about resources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYSTEMS = ("loraplex", "baseline")  # the default comparison
VLLM_SYSTEMS = ("vllm-server", "loraplex-vllm", "loraplex-vllm-mix")
ALL_SYSTEMS = SYSTEMS + VLLM_SYSTEMS
SERVE_APPS = {"loraplex": "loraplex", "baseline": "baseline", "loraplex-vllm": "loraplex-vllm"}
APP_OF = {**SERVE_APPS, "loraplex-vllm-mix": "loraplex-vllm"}  # the Serve app a system's requests reach
LABELS = {
    "loraplex": "loraplex (as shipped)",
    "baseline": "@serve.multiplexed PEFT baseline",
    "vllm-server": "vLLM's own server (--enable-lora)",
    "loraplex-vllm": "loraplex, engine: vllm",
    "loraplex-vllm-mix": "loraplex, engine: vllm, 50/30/20 single/blend/stack",
}
# What each system's ratio is taken against, and the ratio the issues set as the target.
REFERENCE_OF = {"loraplex": "baseline", "loraplex-vllm": "vllm-server", "loraplex-vllm-mix": "loraplex-vllm"}
TARGETS = {"loraplex": 3.0, "loraplex-vllm": 0.95, "loraplex-vllm-mix": 0.8}
STREAMING = frozenset(ALL_SYSTEMS) - {"baseline"}  # the PEFT baseline answers whole responses only


def parse_systems(text: str) -> tuple[str, ...]:
    systems = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(set(systems) - set(ALL_SYSTEMS))
    if unknown or not systems:
        raise ValueError(f"unknown systems {unknown}; choose from {list(ALL_SYSTEMS)}")
    return systems


def system_urls(serve_url: str, vllm_url: str | None, systems: tuple[str, ...]) -> dict[str, str]:
    """The root URL of every system (`<root>/v1/completions` is its endpoint)."""
    return {s: vllm_url if s == "vllm-server" else f"{serve_url}/{APP_OF[s]}" for s in systems}  # type: ignore[misc]


def mix_composition(adapter: str, names: list[str], prompt: list[int]) -> str | dict:
    """The mix's composition for one arrival, fixed by its prompt (so every run sends the same mix): 50 % the
    adapter alone, 30 % a 0.6/0.4 delta blend with the next adapter, 20 % a stack with it."""
    k = sum(prompt) % 10
    other = names[(names.index(adapter) + 1) % len(names)]
    if k < 5:
        return adapter
    if k < 8:
        return {"mode": "blend", "weights": {adapter: 0.6, other: 0.4}}
    return {"mode": "stack", "adapters": [adapter, other]}


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
    dtype: str = "float32"  # every system's weights and compute (loraplex engine dtype, vLLM --dtype)
    native_threads: int | None = None  # torch threads of the native replica (None: Ray's floor(num_cpus))
    # engine: vllm systems and vLLM's own server (the same values for both)
    vllm_max_loras: int = 8
    vllm_max_cpu_loras: int = 128
    vllm_max_lora_rank: int = 32  # a two-adapter stack/blend of rank-16 adapters is rank 32
    vllm_kv_gb: int = 2
    vllm_threads_bind: str = "0-1"


def request_for(
    system: str,
    root: str,
    adapter: str,
    prompt: list[int],
    max_tokens: int,
    stream: bool = False,
    names: list[str] | None = None,
) -> tuple[str, dict, dict]:
    """(url, JSON body, headers) of one greedy completion of exactly `max_tokens` tokens for `system`, whose
    root URL is `root`. `names` (every adapter) is needed by the mix only."""
    body: dict = {"model": adapter, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    if stream and system in STREAMING:
        body.update(stream=True, stream_options={"include_usage": True})
    if system == "loraplex-vllm-mix":
        body["composition"] = mix_composition(adapter, names or [adapter], prompt)
    headers = {"serve_multiplexed_model_id": adapter} if system == "baseline" else {}
    return f"{root}/v1/completions", body, headers


def loraplex_app_args(spec: DeploySpec, base_dir: Path, ad_dir: Path, names: list[str]) -> dict:
    """build_app args: one group `all` with every adapter resident (max_slots = max_host_adapters = len(names))."""
    args = {
        "base_model": str(base_dir),
        "adapter_roots": [str(ad_dir)],
        "device": "cpu",
        "dtype": spec.dtype,
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
                **({"threads": spec.native_threads} if spec.native_threads else {}),
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


def loraplex_vllm_app_args(spec: DeploySpec, base_dir: Path, ad_dir: Path, names: list[str]) -> dict:
    """build_app args: the loraplex app with its one group on `engine: vllm`, sized as vLLM's own server."""
    args = loraplex_app_args(spec, base_dir, ad_dir, names)
    group = {k: v for k, v in args["groups"][0].items() if k not in ("max_slots", "max_host_adapters", "threads")}
    group.pop("batch_wait_timeout_s")
    group["engine"] = "vllm"
    group["vllm"] = {
        "max_loras": spec.vllm_max_loras,
        "max_cpu_loras": max(spec.vllm_max_cpu_loras, len(names)),
        "max_lora_rank": spec.vllm_max_lora_rank,
        "cpu_kvcache_space_gb": spec.vllm_kv_gb,
        "cpu_threads_bind": spec.vllm_threads_bind,
        "composed_cache_count": 4 * len(names),
        "dtype": spec.dtype,
    }
    args["groups"] = [group]
    return args


def deploy_systems(
    spec: DeploySpec, base_dir: Path, ad_dir: Path, names: list[str], systems: tuple[str, ...] = SYSTEMS
) -> dict:
    """serve.run every Serve app the systems need under /<app>; the loraplex apps' args (for the report)."""
    from ray import serve

    from loraplex.bench.baseline_multiplexed import build_baseline
    from loraplex.deployments.app import build_app

    apps = {APP_OF[s] for s in systems if s in APP_OF}
    out = {}
    if "loraplex" in apps:
        out["loraplex"] = loraplex_app_args(spec, base_dir, ad_dir, names)
        serve.run(build_app(out["loraplex"]), name="loraplex", route_prefix="/loraplex")
    if "loraplex-vllm" in apps:
        out["loraplex-vllm"] = loraplex_vllm_app_args(spec, base_dir, ad_dir, names)
        serve.run(build_app(out["loraplex-vllm"]), name="loraplex-vllm", route_prefix="/loraplex-vllm")
    if "baseline" in apps:
        serve.run(
            build_baseline(baseline_app_args(spec, base_dir, ad_dir, names)), name="baseline", route_prefix="/baseline"
        )
    return out
