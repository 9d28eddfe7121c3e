"""Engine configuration: which base model, where adapters live, how many slots, which device."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class HubConfig(BaseModel):
    """Adapters from the Hugging Face Hub: `model` may name `hf://org/name@revision` (or `org/name` when no
    local adapter has that name). Files go through huggingface_hub's cache, so a pre-populated cache serves
    offline (HF_HUB_OFFLINE=1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repos: list[str] = Field(
        default_factory=list,
        description=(
            "Repo id patterns (fnmatch, e.g. 'my-org/*') that requests may load adapters from; empty = hub "
            "sources off. Only listed repos are ever fetched."
        ),
    )
    revision: str = Field(default="main", description="Revision of references that name none (`@rev` omitted).")
    cache_dir: str | None = Field(
        default=None, description="huggingface_hub cache folder (default: HF_HUB_CACHE / ~/.cache/huggingface/hub)."
    )
    max_adapter_mb: float = Field(
        default=512.0,
        gt=0,
        description="Largest hub adapter (its files, summed) fetched; checked from the Hub's metadata before download.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.repos)


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: str = Field(
        description="Path of a Hugging Face causal LM folder (from_pretrained), e.g. models/demo/base."
    )
    adapter_roots: list[str] = Field(
        min_length=1, description="Folders holding PEFT LoRA adapters; an adapter's name is its path below a root."
    )
    max_slots: int = Field(
        default=8, ge=1, le=1024, description="Adapters resident in device slots at once (the device tier)."
    )
    max_host_adapters: int = Field(
        default=32, ge=1, description="Validated adapters kept in host memory (the host tier, LRU)."
    )
    max_rank: int = Field(default=64, ge=1, le=1024, description="Largest LoRA rank accepted; sizes the slot buffers.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        min_length=1,
        description="Linear layers to wrap (last name component or glob over the full module name).",
    )
    allow_pickle: bool = Field(
        default=False, description="Accept adapter_model.bin (pickle) weights; off because unpickling can run code."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto picks CUDA when available, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto is float32 on CPU and bfloat16 on CUDA."
    )
    max_batch_rows: int = Field(
        default=64, ge=1, description="Most virtual rows (logits blends count 1 + adapters) decoded in one forward."
    )
    forward: Literal["native", "hf"] = Field(
        default="native",
        description=(
            "native: our own forward for Llama-family models (llama, mistral, qwen2, qwen3) with a preallocated KV "
            "cache and chunked prefill; other models fall back to HF's forward with a logged reason. "
            "hf: always HF's forward with its DynamicCache (joining prompts get a forward of their own)."
        ),
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description=(
            "torch intra-op threads of the replica process (CPU); none = torch's default, which under Ray is "
            "OMP_NUM_THREADS = floor(num_cpus), so a fractional num_cpus runs on one thread."
        ),
    )
    compile: bool = Field(
        default=False,
        description=(
            "native forward: run each layer's norm + MLP through torch.compile (one graph for all layers; "
            "attention and LoRA stay eager). Falls back to eager with a logged reason when it cannot compile. "
            "Off by default: on CPU it gained little in docs/benchmarks.md and costs a compile at start."
        ),
    )
    cpu_prepack: bool = Field(
        default=True,
        description=(
            "native forward on CPU: prepack the decoder layers' and the head's weights once for oneDNN "
            "(vLLM-CPU's scheme; 1.3-2x faster linears at batched decode, see experts/prepacked.py). Skipped, "
            "with a logged reason, on CUDA, with compile: true, or when this torch build's oneDNN cannot."
        ),
    )
    prefill_tokens: int = Field(
        default=512,
        ge=1,
        description=(
            "Prompt tokens prefilled per engine step (native forward): joining prompts are prefilled in chunks of "
            "this budget inside the running rows' decode step, so a long prompt never stalls them for long."
        ),
    )
    hub: HubConfig = Field(
        default_factory=HubConfig, description="Adapters from the Hugging Face Hub (off by default)."
    )
    loader_threads: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Threads loading adapters disk -> host (validation included); the engine thread never reads files.",
    )

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.max_host_adapters < self.max_slots:
            raise ValueError(f"max_host_adapters ({self.max_host_adapters}) must be >= max_slots ({self.max_slots})")
        if self.dtype == "float16" and self.device == "cpu":
            raise ValueError("dtype float16 is not supported on device cpu; use float32 or bfloat16")
        return self


class VllmOptions(BaseModel):
    """The `vllm:` block of a group with `engine: vllm`: the engine arguments that matter for serving adapters.

    Everything else (paged KV cache, chunked prefill, prefix caching, the scheduler) is vLLM's own default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_loras: int = Field(
        default=4, ge=1, description="Adapters (plain or composed) in one vLLM batch: vLLM's device LoRA slots."
    )
    max_cpu_loras: int = Field(
        default=16, ge=1, description="Adapters vLLM keeps loaded in host memory (LRU); must be >= max_loras."
    )
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        default=64,
        description="Largest rank vLLM accepts, one of vLLM's sizes. A composed adapter's rank is the SUM of its "
        "parts' ranks (a stack of three rank-16 adapters is rank 48), so size it for your largest composition.",
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, description="Sequences vLLM decodes together; none = the group's max_batch_size."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context length (prompt + output); none = the model's own."
    )
    max_num_batched_tokens: int | None = Field(
        default=None, ge=16, description="Token budget of one engine step (chunked prefill); none = vLLM's default."
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of GPU memory vLLM may take (weights + KV cache); GPU only."
    )
    enforce_eager: bool = Field(
        default=False,
        description="Skip torch.compile and CUDA graphs (faster start, slower steps). vLLM-CPU runs eager "
        "whenever LoRA is on.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        default=None, description="Weights dtype; none = the app's dtype (float32 on CPU, bfloat16 on CUDA for auto)."
    )
    cpu_kvcache_space_gb: int | None = Field(
        default=None,
        ge=1,
        description="KV cache size on CPU in whole GiB (VLLM_CPU_KVCACHE_SPACE); none = vLLM's default.",
    )
    cpu_threads_bind: str | None = Field(
        default=None,
        pattern=r"^(auto|nobind|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)$",
        description="Cores the CPU worker binds its OpenMP threads to (VLLM_CPU_OMP_THREADS_BIND), e.g. '0-1'; "
        "none = vLLM's 'auto', which on a 2-core machine keeps one core free and runs on one thread.",
    )
    compact_json: bool = Field(
        default=True,
        description="JSON outputs (response_format) without free whitespace between tokens: small models can "
        "otherwise spend their whole budget on newlines inside an unfinished object.",
    )
    composed_cache_count: int = Field(
        default=64, ge=1, description="Composed adapters (stack, delta blend, moe) kept on disk per replica (LRU)."
    )
    composed_cache_mb: float = Field(
        default=1024.0, gt=0, description="Bytes of composed adapters kept on disk per replica, in MiB (LRU)."
    )
    composed_cache_dir: str | None = Field(
        default=None,
        description="Where a replica writes composed adapters (a subfolder per replica); none = the system temp dir.",
    )

    @model_validator(mode="after")
    def _check(self) -> VllmOptions:
        problems = []
        if self.max_cpu_loras < self.max_loras:
            problems.append(f"vllm.max_cpu_loras ({self.max_cpu_loras}) must be >= vllm.max_loras ({self.max_loras})")
        if problems:
            raise ValueError("; ".join(problems))
        return self
