"""Arguments of the Serve application (`applications[].args` in config/serve*.yaml validate as `AppArgs`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraplex.config.engine import DEFAULT_TARGET_MODULES, EngineConfig, HubConfig, VllmOptions


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplicaResources(_Strict):
    num_cpus: float = Field(
        default=1.0, ge=0, description="CPUs per replica (fractional values let replicas share cores in the demo)."
    )
    num_gpus: float = Field(
        default=0.0, ge=0, description="GPUs per replica; > 0 makes the Ray autoscaler add GPU nodes for this group."
    )
    memory_gb: float | None = Field(
        default=None, gt=0, description="Memory reservation per replica in GiB (scheduling hint), or none."
    )


class GroupAutoscaling(_Strict):
    enabled: bool = Field(
        default=False, description="Scale this group between min and max replicas from its observed load."
    )
    min_replicas: int = Field(
        default=1,
        ge=0,
        description="Floor; 0 lets an idle group scale to zero (the first request waits for a cold start).",
    )
    max_replicas: int = Field(default=4, ge=1, description="Ceiling.")
    target_load: float = Field(
        default=8.0,
        gt=0,
        description="Requests in the system (queued at the router + in replicas) per replica when full.",
    )
    upscale_threshold: float = Field(
        default=1.0, gt=0, description="Scale up when load per replica exceeds target_load * this."
    )
    downscale_threshold: float = Field(
        default=0.5, ge=0, description="Scale down when load per replica stays below target_load * this."
    )
    upscale_delay_s: float = Field(default=0.0, ge=0, description="Load must stay high this long before each step up.")
    downscale_delay_s: float = Field(
        default=60.0, ge=0, description="Load must stay low this long before each step down."
    )
    scale_to_zero_delay_s: float = Field(
        default=600.0, ge=0, description="Idle time before scaling to zero (min_replicas 0 only)."
    )
    look_back_period_s: float = Field(
        default=11.0,
        gt=0,
        description="Window Serve averages metrics over. Ray 2.60 warns when it is not above "
        "metrics_interval_s (10 s), so the default is 11; shorter windows need faster metric pushes "
        "(RAY_SERVE_{REPLICA,HANDLE}_AUTOSCALING_METRIC_PUSH_INTERVAL_S).",
    )

    @model_validator(mode="after")
    def _check(self) -> GroupAutoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling.min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        if self.downscale_threshold >= self.upscale_threshold:
            raise ValueError(
                f"autoscaling.downscale_threshold ({self.downscale_threshold}) must be below upscale_threshold "
                f"({self.upscale_threshold})"
            )
        return self

    def serve_autoscaling_config(self, num_replicas: int) -> dict | None:
        """The deployment's Serve `autoscaling_config` (None when off), starting at `num_replicas` clamped to min/max.

        Every knob the policy reads travels as `policy_kwargs`, so `ExpertGroupPolicy` (and `AppBudgetPolicy`, which
        reads them back per group) rebuilds this very model; only `enabled` and the Serve-side look-back stay out.
        """
        if not self.enabled:
            return None
        kwargs = self.model_dump(exclude={"enabled", "look_back_period_s"})
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "initial_replicas": max(self.min_replicas, min(num_replicas, self.max_replicas)),
            # Delays live in the policy (kwargs); Serve's own delays would demand the same answer on every tick
            # for the whole delay, which a stepwise policy never gives, so they are zero here.
            "target_ongoing_requests": self.target_load,
            "upscale_delay_s": 0,
            "downscale_delay_s": 0,
            "downscale_to_zero_delay_s": 0,
            "look_back_period_s": self.look_back_period_s,
            "policy": {
                "policy_function": "loraplex.deployments.autoscaling:ExpertGroupPolicy",
                "policy_kwargs": kwargs,
            },
        }


class SingleSpec(_Strict):
    mode: Literal["single"] = Field(description="One adapter.")
    adapter: str = Field(description="Adapter name.")


class StackSpec(_Strict):
    mode: Literal["stack"] = Field(description="Sum of the adapters' deltas.")
    adapters: list[str] = Field(min_length=1, description="Adapter names, each once.")


class BlendSpec(_Strict):
    mode: Literal["blend"] = Field(description="Weighted blend of adapters.")
    weights: dict[str, float] = Field(min_length=1, description="Adapter name -> weight (>= 0).")
    space: Literal["delta", "logits"] = Field(
        default="delta", description="delta: weighted sum of deltas; logits: base + sum w_i (logits_i - base)."
    )


class MoeSpec(_Strict):
    mode: Literal["moe"] = Field(description="Top-k of fixed scores, renormalised.")
    weights: dict[str, float] = Field(min_length=1, description="Adapter name -> score.")
    top_k: int = Field(default=1, ge=1, description="How many of the highest scores to keep.")


class ChainStageSpec(_Strict):
    adapter: str | None = Field(default=None, description="Adapter of this stage (none: the base model).")
    prompt: str = Field(description="Template with {input} (and {previous} after the first stage).")


class ChainSpec(_Strict):
    mode: Literal["chain"] = Field(description="Stages run one after another, each feeding the next.")
    stages: list[ChainStageSpec] = Field(min_length=1, description="The stages, in order.")


CompositionSpec = Annotated[SingleSpec | StackSpec | BlendSpec | MoeSpec | ChainSpec, Field(discriminator="mode")]


class NamedComposition(_Strict):
    """A composition callable by name as `model` (config `compositions:` or `POST /v1/compositions`)."""

    composition: CompositionSpec = Field(description="The composition object, as a request's `composition`.")
    description: str | None = Field(default=None, description="Shown in /v1/models.")
    fit: dict[str, float | int | str] | None = Field(
        default=None, description="What scripts/fit_composition.py measured (held-out loss and accuracy)."
    )

    def spec(self) -> dict:
        """The composition as a request's `composition` JSON."""
        return self.composition.model_dump(exclude_none=True)


RESIDENCY_ROUTER = "loraplex.deployments.request_router:ResidencyRouter"


class PlacementConfig(_Strict):
    """Which replica of a group takes a request: one that holds its adapter, unless the adapter is hot."""

    residency: bool = Field(
        default=True,
        description=(
            "Prefer replicas holding the request's adapter in device slots, then in host memory, then any "
            "(loraplex's residency-aware request router). false: Serve's default power-of-two-choices router."
        ),
    )
    hot_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description=(
            "An adapter taking more than this share of the group's recent requests is hot: it is routed to the "
            "least-loaded replicas regardless of residency, so it gets loaded on more replicas instead of queueing "
            "on one."
        ),
    )
    window_s: float = Field(default=30.0, gt=0, description="How far back the hot-adapter shares look.")
    min_requests: int = Field(
        default=20, ge=1, description="Requests in the window before any adapter can count as hot."
    )
    max_imbalance: int = Field(
        default=8,
        ge=0,
        description=(
            "Residency yields when a resident replica has this many more requests in flight than the least-loaded "
            "replica (a warm adapter is not worth a long queue)."
        ),
    )
    stats_period_s: float = Field(
        default=1.0, gt=0, description="How often each replica reports what it holds to the request router."
    )


NATIVE_ONLY = (
    "max_slots",
    "max_host_adapters",
    "max_batch_rows",
    "batch_wait_timeout_s",
    "forward",
    "prefill_tokens",
    "compile",
    "cpu_prepack",
    "threads",
    "loader_threads",
)
_ENGINE_FIELDS = EngineConfig.model_fields


def expert_deployment_name(group: str) -> str:
    return f"expert_{group}"


class GroupConfig(_Strict):
    name: str = Field(
        pattern=r"^[a-z][a-z0-9_-]{0,40}$", description="Expert group name; its deployment is `expert_<name>`."
    )
    adapters: list[str] = Field(
        min_length=1, description="Adapters pinned to this group (loaded at start, routed here)."
    )
    num_replicas: int = Field(
        default=1, ge=1, description="Replicas of this group (autoscaling bounds come in a later config)."
    )
    resources: ReplicaResources = Field(default_factory=ReplicaResources, description="Ray resources of each replica.")
    autoscaling: GroupAutoscaling = Field(
        default_factory=GroupAutoscaling,
        description="Load-based scaling of this group (num_replicas is the start count).",
    )
    max_batch_size: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Most requests decoding together in a replica's running batch (continuous batching: "
        "requests join between decode steps; beyond this they wait in FIFO order).",
    )
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0,
        le=5,
        description="After an idle period, how long a lone request waits for company before running.",
    )
    max_ongoing_requests: int = Field(
        default=64, ge=1, description="Requests a replica accepts at once (>= max_batch_size)."
    )
    max_queued_requests: int = Field(
        default=256, ge=-1, description="Requests queued per handle before 503 (-1 = unbounded, not recommended)."
    )
    max_slots: int = Field(default=8, ge=1, description="Device adapter slots per replica.")
    max_host_adapters: int = Field(default=32, ge=1, description="Validated adapters kept in host memory per replica.")
    max_batch_rows: int | None = Field(
        default=None,
        ge=1,
        description="Most virtual rows decoded in one forward (a logits blend of k adapters "
        "takes k + 1 rows); none = max(64, 4 * max_batch_size), room for every request to blend a few adapters.",
    )
    forward: Literal["native", "hf"] = Field(
        default=_ENGINE_FIELDS["forward"].default, description=_ENGINE_FIELDS["forward"].description
    )
    compile: bool = Field(default=_ENGINE_FIELDS["compile"].default, description=_ENGINE_FIELDS["compile"].description)
    cpu_prepack: bool = Field(
        default=_ENGINE_FIELDS["cpu_prepack"].default, description=_ENGINE_FIELDS["cpu_prepack"].description
    )
    threads: int | None = Field(
        default=_ENGINE_FIELDS["threads"].default, ge=1, description=_ENGINE_FIELDS["threads"].description
    )
    prefill_tokens: int = Field(
        default=_ENGINE_FIELDS["prefill_tokens"].default, ge=1, description=_ENGINE_FIELDS["prefill_tokens"].description
    )
    loader_threads: int = Field(
        default=_ENGINE_FIELDS["loader_threads"].default, ge=1, description=_ENGINE_FIELDS["loader_threads"].description
    )
    placement: PlacementConfig = Field(
        default_factory=PlacementConfig, description="Residency-aware routing across this group's replicas."
    )
    engine: Literal["native", "vllm"] = Field(
        default="native",
        description="What runs this group's replicas: our engine (every composition in one batch) or vLLM "
        "(stack, delta blend and moe as composed adapters; logits blends go to a native group).",
    )
    vllm: VllmOptions | None = Field(
        default=None, description="vLLM engine arguments (engine: vllm only); none = VllmOptions' defaults."
    )

    @property
    def vllm_options(self) -> VllmOptions:
        """The group's vLLM arguments with the group-level defaults filled in (max_num_seqs = max_batch_size)."""
        opts = self.vllm or VllmOptions()
        if opts.max_num_seqs is None:
            opts = opts.model_copy(update={"max_num_seqs": self.max_batch_size})
        return opts

    @property
    def batch_rows(self) -> int:
        return self.max_batch_rows if self.max_batch_rows is not None else max(64, 4 * self.max_batch_size)

    def engine_config(self, app: AppArgs) -> EngineConfig:
        """The engine of each replica of this group: the app's model and adapter settings, this group's sizes."""
        return EngineConfig(
            base_model=app.base_model,
            adapter_roots=app.adapter_roots,
            max_slots=self.max_slots,
            max_host_adapters=self.max_host_adapters,
            max_rank=app.max_rank,
            target_modules=app.target_modules,
            device=app.device,
            dtype=app.dtype,
            max_batch_rows=self.batch_rows,
            forward=self.forward,
            prefill_tokens=self.prefill_tokens,
            compile=self.compile,
            cpu_prepack=self.cpu_prepack,
            threads=self.threads,
            hub=app.hub,
            loader_threads=self.loader_threads,
        )

    def serve_options(self) -> dict:
        """`Deployment.options(...)` of this group: name, Ray resources, replicas or autoscaling, queue bounds."""
        actor: dict = {"num_cpus": self.resources.num_cpus, "num_gpus": self.resources.num_gpus}
        if self.resources.memory_gb:
            actor["memory"] = int(self.resources.memory_gb * 2**30)
        autoscaling = self.autoscaling.serve_autoscaling_config(self.num_replicas)
        scaling = (
            {"autoscaling_config": autoscaling} if autoscaling is not None else {"num_replicas": self.num_replicas}
        )
        p = self.placement
        router = {"request_routing_stats_period_s": p.stats_period_s}
        if p.residency:
            kwargs = p.model_dump(exclude={"residency", "stats_period_s"})
            router |= {"request_router_class": RESIDENCY_ROUTER, "request_router_kwargs": kwargs}
        return {
            "name": expert_deployment_name(self.name),
            "ray_actor_options": actor,
            **scaling,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "request_router_config": router,
        }

    @model_validator(mode="after")
    def _check(self) -> GroupConfig:
        problems = []
        if self.max_ongoing_requests < self.max_batch_size:
            problems.append(
                f"group {self.name!r}: max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size})"
            )
        if self.engine == "native" and len(self.adapters) > self.max_slots:
            problems.append(
                f"group {self.name!r}: {len(self.adapters)} pinned adapters exceed max_slots ({self.max_slots})"
            )
        if self.max_host_adapters < self.max_slots:
            problems.append(
                f"group {self.name!r}: max_host_adapters ({self.max_host_adapters}) must be >= max_slots "
                f"({self.max_slots})"
            )
        if self.batch_rows < self.max_batch_size:
            problems.append(
                f"group {self.name!r}: max_batch_rows ({self.batch_rows}) must be >= max_batch_size "
                f"({self.max_batch_size})"
            )
        if self.engine == "native" and self.vllm is not None:
            problems.append(f"group {self.name!r}: a vllm block needs engine: vllm (engine is {self.engine!r})")
        if self.engine == "vllm":
            # changed from their defaults (not "set": the ingress gets a round-tripped dump with every field)
            native_only = sorted(k for k in NATIVE_ONLY if getattr(self, k) != type(self).model_fields[k].default)
            if native_only:
                problems.append(
                    f"group {self.name!r}: {native_only} are native-engine settings; with engine: vllm use "
                    f"vllm.max_loras / vllm.max_cpu_loras / vllm.max_num_seqs"
                )
            opts = self.vllm_options
            if len(self.adapters) > opts.max_cpu_loras:
                problems.append(
                    f"group {self.name!r}: {len(self.adapters)} pinned adapters exceed vllm.max_cpu_loras "
                    f"({opts.max_cpu_loras})"
                )
            if opts.max_num_seqs is not None and self.max_ongoing_requests < opts.max_num_seqs:
                problems.append(
                    f"group {self.name!r}: max_ongoing_requests ({self.max_ongoing_requests}) must be >= "
                    f"vllm.max_num_seqs ({opts.max_num_seqs})"
                )
        if len(set(self.adapters)) != len(self.adapters):
            problems.append(
                f"group {self.name!r}: adapters listed twice: "
                f"{sorted({a for a in self.adapters if self.adapters.count(a) > 1})}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class PolicyConfig(_Strict):
    """How router probabilities become a composition (`loraplex.router.policy.decide`). The one source of these
    defaults: a trained router's saved policy, the demo's and the Serve app's all read this model."""

    top_k: int = Field(
        default=1, ge=1, description="Experts per request when the router is confident (1 = hard routing)."
    )
    temperature: float = Field(default=1.0, gt=0, description="Softmax temperature on router logits.")
    confidence_floor: float = Field(
        default=0.6, ge=0, le=1, description="Below this max-probability the fallback applies."
    )
    fallback: Literal["base", "soft_topk", "top1"] = Field(
        default="top1",
        description="What low-confidence requests get: the top-1 adapter alone (routing.mode says "
        "auto:fallback_top1, so the client sees the low confidence; the default, because adapters with different "
        "answer formats do not blend), the base model, or a soft top-k blend.",
    )
    fallback_top_k: int = Field(default=2, ge=1, description="k of the soft fallback blend.")


class RoutingConfig(PolicyConfig):
    router_path: str | None = Field(
        default=None, description="Trained router folder (router.json + router.safetensors); none disables model=auto."
    )
    reload_interval_s: float | None = Field(
        default=30.0,
        ge=1,
        description="How often each ingress replica checks router_path for a retrained router and swaps it in "
        "(none: only on POST /v1/router/reload).",
    )
    learn_from_traffic: bool = Field(
        default=False,
        description="Keep a bounded per-adapter sample of the prompt embeddings (never the text) of requests that "
        "name their adapter, and route model=auto with them (docs/security.md says what is stored).",
    )
    traffic_examples_per_adapter: int = Field(
        default=64, ge=1, le=4096, description="Reservoir size per adapter when learn_from_traffic is on."
    )
    traffic_min_examples: int = Field(
        default=8,
        ge=1,
        description="Samples an adapter the router was not trained on needs before learned traffic makes it routable.",
    )


class LimitsConfig(_Strict):
    max_prompt_chars: int = Field(default=16000, ge=1, description="Longer prompts get HTTP 400.")
    max_tokens_limit: int = Field(default=512, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(default=64, ge=1, description="max_tokens when the request gives none.")
    max_prompts: int = Field(
        default=32, ge=1, description="Prompts one /v1/completions request may list (each gets its own n choices)."
    )
    max_routing_queue: int = Field(
        default=64,
        ge=1,
        description="Requests an ingress replica lets wait for the MoE router (model 'auto', /v1/route); "
        "beyond that, 503 + Retry-After.",
    )


class AuthConfig(_Strict):
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key clients send as `Authorization: Bearer`."
    )
    api_key_file: str | None = Field(
        default=None, description="File holding the API key (first line); the key itself never goes in this config."
    )
    admin_key_env: str | None = Field(
        default=None, description="Environment variable holding the admin key required by POST/DELETE /v1/adapters."
    )
    admin_key_file: str | None = Field(default=None, description="File holding the admin key (first line).")
    allow_public_without_key: bool = Field(
        default=False, description="Allow a non-loopback HTTP host with no API key configured (not recommended)."
    )

    @model_validator(mode="after")
    def _check(self) -> AuthConfig:
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
    adapter_roots: list[str] = Field(
        min_length=1, description="Folders holding PEFT adapters; adapter names are paths below them."
    )
    groups: list[GroupConfig] = Field(min_length=1, description="Expert groups, one Serve deployment each.")
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="MoE routing for model=auto.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request limits enforced by the ingress.")
    default_group: str | None = Field(
        default=None,
        description="Group serving adapters not pinned anywhere and the base model (default: first group).",
    )
    max_rank: int = Field(default=64, ge=1, description="Largest LoRA rank accepted.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES), description="Linear layers wrapped for LoRA."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Expert device; auto picks CUDA when the replica has a GPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Expert weights dtype."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys (read from env or file at start).")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Larger request bodies get HTTP 413.")
    max_adapter_mb: float = Field(
        default=512.0, gt=0, description="Largest adapter weights file accepted by run-time registration."
    )
    import_roots: list[str] = Field(
        default_factory=list,
        description="Folders POST /v1/adapters may copy adapters from (empty = run-time registration off).",
    )
    adapter_scan_interval_s: float | None = Field(
        default=10.0,
        gt=0,
        description=(
            "How often the ingress rescans the adapter roots in the background for folders dropped in by hand "
            "(null: only at start). Registrations through the API show at once regardless."
        ),
    )
    compositions: dict[str, NamedComposition] = Field(
        default_factory=dict,
        description="Named compositions: each name is usable as `model` and listed by /v1/models.",
    )
    hub: HubConfig = Field(
        default_factory=HubConfig, description="Adapters from the Hugging Face Hub (off by default)."
    )
    ingress_num_cpus: float = Field(
        default=0.5, ge=0, description="CPUs of the router ingress (it never loads the base model)."
    )
    ingress_replicas: int = Field(default=1, ge=1, description="Router ingress replicas.")
    ingress_max_ongoing_requests: int = Field(
        default=512,
        ge=1,
        description="Requests one ingress replica handles at once (Serve's default of 5 would cap expert batches).",
    )

    @model_validator(mode="after")
    def _check(self) -> AppArgs:
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
        for name in self.compositions:
            if name in ("base", "auto"):
                problems.append(f"composition name {name!r} is reserved (base, auto)")
            if name in seen:
                problems.append(f"composition {name!r} shadows an adapter pinned to group {seen[name]!r}")
        if self.limits.default_max_tokens > self.limits.max_tokens_limit:
            problems.append(
                f"limits.default_max_tokens ({self.limits.default_max_tokens}) exceeds limits.max_tokens_limit "
                f"({self.limits.max_tokens_limit})"
            )
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

    @property
    def engine_of(self) -> dict[str, str]:
        """Group name -> its engine (`native` or `vllm`)."""
        return {g.name: g.engine for g in self.groups}
