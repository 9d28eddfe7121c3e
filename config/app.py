"""Arguments of the Serve application (`applications[].args` in config/serve*.yaml validate as `AppArgs`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraplex.config.engine import DEFAULT_TARGET_MODULES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplicaResources(_Strict):
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs per replica (fractional values let replicas share cores in the demo).")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica; > 0 makes the Ray autoscaler add GPU nodes for this group.")
    memory_gb: float | None = Field(default=None, gt=0, description="Memory reservation per replica in GiB (scheduling hint), or none.")


class GroupAutoscaling(_Strict):
    enabled: bool = Field(default=False, description="Scale this group between min and max replicas from its observed load.")
    min_replicas: int = Field(default=1, ge=0, description="Floor; 0 lets an idle group scale to zero (the first request waits for a cold start).")
    max_replicas: int = Field(default=4, ge=1, description="Ceiling.")
    target_load: float = Field(default=8.0, gt=0, description="Requests in the system (queued at the router + in replicas) per replica when full.")
    upscale_threshold: float = Field(default=1.0, gt=0, description="Scale up when load per replica exceeds target_load * this.")
    downscale_threshold: float = Field(default=0.5, ge=0, description="Scale down when load per replica stays below target_load * this.")
    upscale_delay_s: float = Field(default=0.0, ge=0, description="Load must stay high this long before each step up.")
    downscale_delay_s: float = Field(default=60.0, ge=0, description="Load must stay low this long before each step down.")
    scale_to_zero_delay_s: float = Field(default=600.0, ge=0, description="Idle time before scaling to zero (min_replicas 0 only).")
    look_back_period_s: float = Field(default=11.0, gt=0, description="Window Serve averages metrics over. Ray 2.60 warns when it is not above "
                                      "metrics_interval_s (10 s), so the default is 11; shorter windows need faster metric pushes "
                                      "(RAY_SERVE_{REPLICA,HANDLE}_AUTOSCALING_METRIC_PUSH_INTERVAL_S).")

    @model_validator(mode="after")
    def _check(self) -> "GroupAutoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscaling.min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        if self.downscale_threshold >= self.upscale_threshold:
            raise ValueError(f"autoscaling.downscale_threshold ({self.downscale_threshold}) must be below upscale_threshold ({self.upscale_threshold})")
        return self


class GroupConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,40}$", description="Expert group name; its deployment is `expert_<name>`.")
    adapters: list[str] = Field(min_length=1, description="Adapters pinned to this group (loaded at start, routed here).")
    num_replicas: int = Field(default=1, ge=1, description="Replicas of this group (autoscaling bounds come in a later config).")
    resources: ReplicaResources = Field(default_factory=ReplicaResources, description="Ray resources of each replica.")
    autoscaling: GroupAutoscaling = Field(default_factory=GroupAutoscaling, description="Load-based scaling of this group (num_replicas is the start count).")
    max_batch_size: int = Field(default=16, ge=1, le=1024, description="Most requests decoding together in a replica's running batch (continuous batching: "
                                "requests join between decode steps; beyond this they wait in FIFO order).")
    batch_wait_timeout_s: float = Field(default=0.0, ge=0, le=5, description="After an idle period, how long a lone request waits for company before running.")
    max_ongoing_requests: int = Field(default=64, ge=1, description="Requests a replica accepts at once (>= max_batch_size).")
    max_queued_requests: int = Field(default=256, ge=-1, description="Requests queued per handle before 503 (-1 = unbounded, not recommended).")
    max_slots: int = Field(default=8, ge=1, description="Device adapter slots per replica.")
    max_host_adapters: int = Field(default=32, ge=1, description="Validated adapters kept in host memory per replica.")

    @model_validator(mode="after")
    def _check(self) -> "GroupConfig":
        problems = []
        if self.max_ongoing_requests < self.max_batch_size:
            problems.append(f"group {self.name!r}: max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size ({self.max_batch_size})")
        if len(self.adapters) > self.max_slots:
            problems.append(f"group {self.name!r}: {len(self.adapters)} pinned adapters exceed max_slots ({self.max_slots})")
        if self.max_host_adapters < self.max_slots:
            problems.append(f"group {self.name!r}: max_host_adapters ({self.max_host_adapters}) must be >= max_slots ({self.max_slots})")
        if len(set(self.adapters)) != len(self.adapters):
            problems.append(f"group {self.name!r}: adapters listed twice: {sorted({a for a in self.adapters if self.adapters.count(a) > 1})}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RoutingConfig(_Strict):
    router_path: str | None = Field(default=None, description="Trained router folder (router.json + router.safetensors); none disables model=auto.")
    top_k: int = Field(default=1, ge=1, description="Experts per request when the router is confident (1 = hard routing).")
    temperature: float = Field(default=1.0, gt=0, description="Softmax temperature on router logits.")
    confidence_floor: float = Field(default=0.6, ge=0, le=1, description="Below this max-probability the fallback applies.")
    fallback: Literal["base", "soft_topk"] = Field(default="soft_topk", description="What low-confidence requests get: the base model or a soft top-k blend.")
    fallback_top_k: int = Field(default=2, ge=1, description="k of the soft fallback blend.")


class LimitsConfig(_Strict):
    max_prompt_chars: int = Field(default=16000, ge=1, description="Longer prompts get HTTP 400.")
    max_tokens_limit: int = Field(default=512, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(default=64, ge=1, description="max_tokens when the request gives none.")
    max_routing_queue: int = Field(default=64, ge=1, description="Requests an ingress replica lets wait for the MoE router (model 'auto', /v1/route); beyond that, 503 + Retry-After.")


class AuthConfig(_Strict):
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key clients send as `Authorization: Bearer`.")
    api_key_file: str | None = Field(default=None, description="File holding the API key (first line); the key itself never goes in this config.")
    admin_key_env: str | None = Field(default=None, description="Environment variable holding the admin key required by POST/DELETE /v1/adapters.")
    admin_key_file: str | None = Field(default=None, description="File holding the admin key (first line).")
    allow_public_without_key: bool = Field(default=False, description="Allow a non-loopback HTTP host with no API key configured (not recommended).")

    @model_validator(mode="after")
    def _check(self) -> "AuthConfig":
        if self.api_key_env and self.api_key_file:
            raise ValueError("set api_key_env or api_key_file, not both")
        if self.admin_key_env and self.admin_key_file:
            raise ValueError("set admin_key_env or admin_key_file, not both")
        return self

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_env or self.api_key_file)


class AppArgs(_Strict):
    base_model: str = Field(description="Path of the base causal LM (from_pretrained); the same on every node.")
    adapter_roots: list[str] = Field(min_length=1, description="Folders holding PEFT adapters; adapter names are paths below them.")
    groups: list[GroupConfig] = Field(min_length=1, description="Expert groups, one Serve deployment each.")
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="MoE routing for model=auto.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request limits enforced by the ingress.")
    default_group: str | None = Field(default=None, description="Group serving adapters not pinned anywhere and the base model (default: first group).")
    max_rank: int = Field(default=64, ge=1, description="Largest LoRA rank accepted.")
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES), description="Linear layers wrapped for LoRA.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Expert device; auto picks CUDA when the replica has a GPU.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(default="auto", description="Expert weights dtype.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys (read from env or file at start).")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Larger request bodies get HTTP 413.")
    max_adapter_mb: float = Field(default=512.0, gt=0, description="Largest adapter weights file accepted by run-time registration.")
    import_roots: list[str] = Field(default_factory=list, description="Folders POST /v1/adapters may copy adapters from (empty = run-time registration off).")
    ingress_num_cpus: float = Field(default=0.5, ge=0, description="CPUs of the router ingress (it never loads the base model).")
    ingress_replicas: int = Field(default=1, ge=1, description="Router ingress replicas.")
    ingress_max_ongoing_requests: int = Field(default=512, ge=1, description="Requests one ingress replica handles at once (Serve's default of 5 would cap expert batches).")

    @model_validator(mode="after")
    def _check(self) -> "AppArgs":
        problems = []
        names = [g.name for g in self.groups]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"group names must be unique, repeated: {dup}")
        seen: dict[str, str] = {}
        for g in self.groups:
            for a in g.adapters:
                if a in seen:
                    problems.append(f"adapter {a!r} is pinned to both {seen[a]!r} and {g.name!r}")
                seen[a] = g.name
        if self.default_group is not None and self.default_group not in names:
            problems.append(f"default_group {self.default_group!r} is not a group; groups: {names}")
        if self.limits.default_max_tokens > self.limits.max_tokens_limit:
            problems.append(f"limits.default_max_tokens ({self.limits.default_max_tokens}) exceeds limits.max_tokens_limit ({self.limits.max_tokens_limit})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def group_of(self) -> dict[str, str]:
        """Pinned adapter -> group name."""
        return {a: g.name for g in self.groups for a in g.adapters}

    @property
    def fallback_group(self) -> str:
        return self.default_group or self.groups[0].name
