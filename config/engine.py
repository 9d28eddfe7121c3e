"""Engine configuration: which base model, where adapters live, how many slots, which device."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


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

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.max_host_adapters < self.max_slots:
            raise ValueError(f"max_host_adapters ({self.max_host_adapters}) must be >= max_slots ({self.max_slots})")
        if self.dtype == "float16" and self.device == "cpu":
            raise ValueError("dtype float16 is not supported on device cpu; use float32 or bfloat16")
        return self
