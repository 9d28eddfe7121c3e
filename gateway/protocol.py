"""OpenAI-compatible request bodies (`/v1/completions`, `/v1/chat/completions`, `/v1/route`, `/v1/adapters`).

Unknown fields are rejected (HTTP 400 naming the field) except a few OpenAI fields that clients send
and that change nothing here when left at their defaults.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JsonSchemaFormat(_Body):
    name: str = Field(default="response", description="The schema's name (OpenAI requires one; not used here).")
    schema_: dict[str, Any] = Field(alias="schema", description="A JSON Schema every output must validate against.")
    strict: bool | None = Field(default=None, description="Accepted; outputs always follow the schema.")
    description: str | None = Field(default=None)


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = Field(description="Constrain the output to JSON.")
    json_schema: JsonSchemaFormat | None = Field(default=None, description="Required with type json_schema.")

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("response_format.json_schema is required with type 'json_schema', and only then")
        return self


class _Sampling(_Body):
    model: str = Field(description="An adapter name, 'base', or 'auto' (MoE routing).")
    max_tokens: int | None = Field(default=None, description="Tokens to generate (default from the server's limits).")
    max_completion_tokens: int | None = Field(default=None, description="Alias of max_tokens (newer OpenAI clients).")
    temperature: float = Field(default=0.0, description="0 = greedy.")
    top_p: float = Field(default=1.0)
    top_k: int = Field(default=0, description="Extension: 0 = off.")
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = Field(default=None)
    n: int = Field(default=1, description="Choices sharing one prefill (vLLM groups; native groups: 1).")
    stream: bool = Field(default=False)
    stream_options: dict[str, bool] | None = Field(
        default=None, description="{'include_usage': true} adds a usage chunk."
    )
    composition: dict[str, Any] | str | None = Field(
        default=None, description="Extension: the engine's composition object; overrides `model` routing."
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")
    ignore_eos: bool = Field(default=False, description="Extension: decode exactly max_tokens.")
    # Run by vLLM groups; native groups answer 400 for values other than the defaults.
    presence_penalty: float = Field(default=0.0, description="In [-2, 2].")
    frequency_penalty: float = Field(default=0.0, description="In [-2, 2].")
    repetition_penalty: float = Field(default=1.0, description="vLLM extension: > 1 discourages repeats.")
    min_p: float = Field(default=0.0, description="vLLM extension: drop tokens below min_p x the top probability.")
    min_tokens: int = Field(default=0, description="vLLM extension: no EOS or stop before this many tokens.")
    logit_bias: dict[str, float] | None = Field(default=None, description="Token id (as a string) -> bias.")
    response_format: ResponseFormat | None = Field(default=None, description="json_object or json_schema output.")


class CompletionRequest(_Sampling):
    prompt: str | list[int] = Field(description="Text, or token ids.")
    echo: Literal[False] = Field(default=False, description="Only false is supported.")
    logprobs: int | None = Field(default=None, description="Chosen-token log probabilities plus this many top ones.")


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(default=None, description="Return the chosen tokens' log probabilities.")
    top_logprobs: int | None = Field(default=None, description="With logprobs: this many top tokens per step.")


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
