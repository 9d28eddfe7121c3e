"""Every Serve YAML in config/ validates; AppArgs collects cross-field problems."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from loraplex.config.app import AppArgs

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
YAMLS = sorted(CONFIG_DIR.glob("serve*.yaml"))


def test_there_are_serve_configs():
    assert {p.name for p in YAMLS} >= {"serve.yaml", "serve.gpu.yaml"}


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_serve_yaml_args_validate_as_app_args(path):
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load(path.read_text())
    ServeDeploySchema(**doc)  # Serve's own schema accepts the file
    for app in doc["applications"]:
        assert app["import_path"] == "loraplex.deployments.app:build_app"
        args = AppArgs(**app["args"])
        assert AppArgs(**args.model_dump()) == args  # what the ingress receives (every field, set or not)
        host = doc.get("http_options", {}).get("host", "127.0.0.1")
        if host not in ("127.0.0.1", "localhost", "::1"):  # public bind needs a key (docs/security.md)
            assert args.auth.has_api_key or args.auth.allow_public_without_key, (
                f"{path.name} binds {host} without an API key"
            )


BASE = yaml.safe_load((CONFIG_DIR / "serve.yaml").read_text())["applications"][0]["args"]


def _set(path: str, value):
    def change(d):
        keys = path.split(".")
        cur = d
        for k in keys[:-1]:
            cur = cur[int(k)] if k.isdigit() else cur[k]
        cur[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value

    return change


CASES = [
    ("unknown key", _set("slots", 3), "Extra inputs are not permitted"),
    (
        "adapter in two groups",
        _set("groups.1.adapters", ["entities", "intent"]),
        "adapter 'intent' is pinned to both 'support' and 'extraction'",
    ),
    ("duplicate group", _set("groups.1.name", "support"), r"group names must be unique, repeated: \['support'\]"),
    (
        "bad default group",
        _set("default_group", "nope"),
        r"default_group 'nope' is not a group; groups: \['support', 'extraction'\]",
    ),
    (
        "ongoing below batch",
        _set("groups.0.max_ongoing_requests", 4),
        r"max_ongoing_requests \(4\) must be >= max_batch_size \(16\)",
    ),
    ("too many pinned", _set("groups.0.max_slots", 1), r"2 pinned adapters exceed max_slots \(1\)"),
    ("bad fallback", _set("routing.fallback", "guess"), "Input should be 'base', 'soft_topk' or 'top1'"),
    ("bad device", _set("device", "tpu"), "Input should be 'auto', 'cpu' or 'cuda'"),
    (
        "default tokens over limit",
        _set("limits.default_max_tokens", 1000),
        r"default_max_tokens \(1000\) exceeds limits.max_tokens_limit \(256\)",
    ),
    ("bad group name", _set("groups.0.name", "Support Team"), "String should match pattern"),
    ("vllm block on a native group", _set("groups.0.vllm", {"max_loras": 2}), "a vllm block needs engine: vllm"),
    ("unknown engine", _set("groups.0.engine", "sglang"), "Input should be 'native' or 'vllm'"),
]


def _vllm(**vllm):
    """groups.0 as a vLLM group (the native-only sizes removed), with `vllm` as its block."""

    def change(d):
        g = d["groups"][0]
        for k in ("max_slots", "max_host_adapters", "max_batch_rows", "batch_wait_timeout_s"):
            g.pop(k, None)
        g["engine"] = "vllm"
        g["vllm"] = vllm

    return change


def _vllm_and(path: str, value, **vllm):
    def change(d):
        _vllm(**vllm)(d)
        _set(path, value)(d)

    return change


CASES += [
    ("unknown vllm option", _vllm(tensor_parallel=2), "Extra inputs are not permitted"),
    (
        "cpu loras below loras",
        _vllm(max_loras=8, max_cpu_loras=4),
        r"vllm.max_cpu_loras \(4\) must be >= vllm.max_loras \(8\)",
    ),
    ("rank vLLM has no size for", _vllm(max_lora_rank=48), "Input should be 1, 8, 16, 32, 64, 128, 256, 320 or 512"),
    (
        "pinned over cpu loras",
        _vllm(max_loras=1, max_cpu_loras=1),
        r"2 pinned adapters exceed vllm.max_cpu_loras \(1\)",
    ),
    (
        "ongoing below seqs",
        _vllm(max_num_seqs=64),
        r"max_ongoing_requests \(24\) must be >= vllm.max_num_seqs \(64\)",
    ),
    ("bad threads bind", _vllm(cpu_threads_bind="all cores"), "String should match pattern"),
    ("whole GiB of KV", _vllm(cpu_kvcache_space_gb=0.5), "Input should be a valid integer"),
    (
        "native setting on a vllm group",
        _vllm_and("groups.0.max_slots", 4),
        r"\['max_slots'\] are native-engine settings; with engine: vllm use vllm.max_loras",
    ),
]


def test_a_vllm_group_takes_its_batch_size_unless_told_otherwise():
    args = copy.deepcopy(BASE)
    _vllm(max_loras=2)(args)
    group = AppArgs(**args).groups[0]
    assert group.vllm_options.max_num_seqs == group.max_batch_size == 16
    assert AppArgs(**args).engine_of == {"support": "vllm", "extraction": "native"}
    _vllm(max_num_seqs=8)(args)
    assert AppArgs(**args).groups[0].vllm_options.max_num_seqs == 8


@pytest.mark.parametrize("name,change,match", CASES, ids=[c[0] for c in CASES])
def test_app_args_errors(name, change, match):
    args = copy.deepcopy(BASE)
    change(args)
    with pytest.raises(ValidationError, match=match):
        AppArgs(**args)


def test_every_field_is_documented():
    from loraplex.config.app import GroupConfig, LimitsConfig, ReplicaResources, RoutingConfig
    from loraplex.config.engine import EngineConfig, VllmOptions

    for model in (AppArgs, GroupConfig, RoutingConfig, LimitsConfig, ReplicaResources, EngineConfig, VllmOptions):
        missing = [n for n, f in model.model_fields.items() if not f.description]
        assert not missing, f"{model.__name__} fields without description: {missing}"


def test_access_control(tmp_path, monkeypatch):
    from loraplex.config.app import AuthConfig
    from loraplex.experts.errors import AuthenticationError, ConfigError, PermissionDeniedError
    from loraplex.gateway.auth import AccessControl

    (tmp_path / "key").write_text("user-secret\n")
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    ac = AccessControl(AuthConfig(api_key_file=str(tmp_path / "key"), admin_key_env="ADMIN_KEY"))
    ac.check("Bearer user-secret")
    ac.check("Bearer admin-secret")
    ac.check_admin("Bearer admin-secret")
    cases = [
        (lambda: ac.check(None), AuthenticationError, "missing API key"),
        (lambda: ac.check("Bearer nope"), AuthenticationError, "invalid API key"),
        (lambda: ac.check("Basic user-secret"), AuthenticationError, "missing API key"),
        (lambda: ac.check_admin("Bearer user-secret"), PermissionDeniedError, "use the admin key"),
        (
            lambda: AccessControl(AuthConfig(api_key_env="NOT_SET_ANYWHERE")),
            ConfigError,
            "'NOT_SET_ANYWHERE' is not set",
        ),
        (lambda: AccessControl(AuthConfig(api_key_file=str(tmp_path / "missing"))), ConfigError, "missing or empty"),
        (
            lambda: AccessControl(AuthConfig(api_key_env="ADMIN_KEY")).check_admin("Bearer admin-secret"),
            PermissionDeniedError,
            "needs an admin key",
        ),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()
    open_ac = AccessControl(AuthConfig())
    open_ac.check(None)
    open_ac.check_admin(None)


# http host, auth config, expected problem (None: starts)
EXPOSURE = [
    ("127.0.0.1", {}, None),
    ("localhost", {}, None),
    ("::1", {}, None),
    ("0.0.0.0", {}, "HTTP host '0.0.0.0' is reachable from other machines but no API key is configured"),
    ("10.1.2.3", {}, "no API key is configured"),
    ("example.internal", {}, "no API key is configured"),
    ("0.0.0.0", {"allow_public_without_key": True}, None),
    ("0.0.0.0", {"api_key_env": "LORAPLEX_TEST_KEY"}, None),
    (None, {}, None),  # host unknown (outside Serve): nothing to check
]


@pytest.mark.parametrize("host,auth,problem", EXPOSURE, ids=[f"{c[0]}-{sorted(c[1])}" for c in EXPOSURE])
def test_a_public_host_without_a_key_refuses_to_start(monkeypatch, host, auth, problem):
    """Defect 7: `auth.allow_public_without_key` was read by no runtime code."""
    from loraplex.config.app import AuthConfig
    from loraplex.experts.errors import ConfigError
    from loraplex.gateway.auth import AccessControl

    monkeypatch.setenv("LORAPLEX_TEST_KEY", "k")
    if problem is None:
        AccessControl(AuthConfig(**auth), http_host=host)
    else:
        with pytest.raises(ConfigError, match=problem):
            AccessControl(AuthConfig(**auth), http_host=host)
