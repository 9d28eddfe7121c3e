"""OpenAI-compatible request bodies (`/v1/completions`, `/v1/chat/completions`, `/v1/route`, `/v1/adapters`).

Unknown fields are rejected (HTTP 400 naming the field) except a few OpenAI fields that clients send
and that change nothing here when left at their defaults.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Sampling(_Body):
    model: str = Field(description="An adapter name, 'base', or 'auto' (MoE routing).")
    max_tokens: int | None = Field(default=None, description="Tokens to generate (default from the server's limits).")
    max_completion_tokens: int | None = Field(default=None, description="Alias of max_tokens (newer OpenAI clients).")
    temperature: float = Field(default=0.0, description="0 = greedy.")
    top_p: float = Field(default=1.0)
    top_k: int = Field(default=0, description="Extension: 0 = off.")
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = Field(default=None)
    n: int = Field(default=1, description="Only 1 is supported.")
    stream: bool = Field(default=False)
    stream_options: dict[str, bool] | None = Field(
        default=None, description="{'include_usage': true} adds a usage chunk."
    )
    composition: dict[str, Any] | str | None = Field(
        default=None, description="Extension: the engine's composition object; overrides `model` routing."
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")
    presence_penalty: Literal[0, 0.0] = Field(default=0, description="Only 0 is supported.")
    frequency_penalty: Literal[0, 0.0] = Field(default=0, description="Only 0 is supported.")
    ignore_eos: bool = Field(default=False, description="Extension: decode exactly max_tokens.")

    @field_validator("n")
    @classmethod
    def _only_one(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"n={v} is not supported; only n=1")
        return v


class CompletionRequest(_Sampling):
    prompt: str | list[int] = Field(description="Text, or token ids.")
    echo: Literal[False] = Field(default=False, description="Only false is supported.")
    logprobs: None = Field(default=None, description="Not supported.")


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: Literal[False] | None = Field(default=None, description="Not supported.")


class RouteRequest(_Body):
    prompt: str = Field(description="Text to route.")
    model: str = Field(default="auto", description="As in completions; 'auto' explains the MoE decision.")
    composition: dict[str, Any] | str | None = Field(default=None)


class AdapterRegistration(_Body):
    name: str = Field(description="Adapter name to register (path-like, e.g. 'support/refunds').")
    source: str = Field(description="PEFT adapter folder inside one of the app's import_roots.")
    routing_examples: list[str] | None = Field(
        default=None,
        description="Example prompts this adapter should answer (a handful is enough): model 'auto' routes to it "
        "as soon as registration returns. Without them, a routing_examples.jsonl in the source folder is used.",
    )


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with `$defs` references inlined, for an OpenAPI `requestBody`."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node and node["$ref"].startswith("#/$defs/"):
                return resolve(defs[node["$ref"].split("/")[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def openapi_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` for a FastAPI route that reads the raw body itself (so errors keep the OpenAI shape)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}}
