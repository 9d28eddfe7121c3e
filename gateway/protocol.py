"""OpenAI-compatible request bodies (`/v1/completions`, `/v1/chat/completions`, `/v1/route`, `/v1/adapters`).

Unknown fields are rejected (HTTP 400 naming the field) except a few OpenAI fields that clients send
and that change nothing here when left at their defaults.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraplex.config.app import CompositionSpec
from loraplex.experts.errors import RequestError


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


# Known OpenAI / vLLM fields this server does not run, with the values that mean "off" (accepted, so clients that
# always send them work): anything else is a 400 naming the field (`unsupported_fields`).
NOT_SUPPORTED: dict[str, tuple[str, tuple[object, ...]]] = {
    "tools": ("tool calling", (None, [])),
    "tool_choice": ("tool calling", (None, "none", "auto")),
    "functions": ("function calling", (None, [])),
    "function_call": ("function calling", (None, "none", "auto")),
    "parallel_tool_calls": ("tool calling", (None, True, False)),
    "suffix": ("insertion (suffix)", (None, "")),
    "best_of": ("best_of (use n)", (None, 1)),
    "audio": ("audio output", (None,)),
    "modalities": ("non-text modalities", (None, ["text"])),
    "prediction": ("predicted outputs", (None,)),
    "web_search_options": ("web search", (None,)),
    "reasoning_effort": ("reasoning effort", (None,)),
    "use_beam_search": ("beam search", (None, False)),
    "length_penalty": ("beam search length_penalty", (None, 1.0, 1)),
    "bad_words": ("bad_words", (None, [])),
    "prompt_embeds": ("prompt embeddings", (None,)),
    "logprob_token_ids": ("logprob_token_ids", (None, [])),
    "return_tokens_as_token_ids": ("return_tokens_as_token_ids", (None, False)),
    "truncate_prompt_tokens": ("truncate_prompt_tokens", (None,)),
    "priority": ("priority scheduling", (None, 0)),
    "spaces_between_special_tokens": ("spaces_between_special_tokens: false", (None, True)),
    "watermarking": ("watermarking", (None, False)),
}


def unsupported_fields(body: dict) -> list[str]:
    """Problems for the fields in `body` that this server knows but does not run (values other than "off")."""
    return [
        f"field {k!r} is not supported by this server ({what}); got {str(body[k])[:80]}"
        for k, (what, off) in NOT_SUPPORTED.items()
        if k in body and not any(body[k] == v and type(body[k]) is type(v) or body[k] is v for v in off)
    ]


class StreamOptions(_Body):
    include_usage: bool | None = Field(default=None, description="Add a final chunk with the request's usage.")
    continuous_usage_stats: Literal[False] | None = Field(
        default=None, description="vLLM extension: only false (usage comes in the final chunk)."
    )


class StructuredOutputs(_Body):
    """vLLM's `structured_outputs` extension, the JSON kinds (the same grammar path as `response_format`)."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json", description="A JSON schema.")
    json_object: bool | None = Field(default=None, description="Any JSON object.")

    @model_validator(mode="after")
    def _one_kind(self) -> StructuredOutputs:
        if (self.json_ is not None) == bool(self.json_object):
            raise ValueError("structured_outputs takes exactly one of 'json' (a schema) or 'json_object': true")
        return self


class _Sampling(_Body):
    @classmethod
    def from_body(cls, body: dict):
        """Validate a request body: known-but-unsupported fields first (a 400 naming each one that is not "off",
        e.g. `tools`), then the model (unknown fields are 400s naming them too)."""
        problems = unsupported_fields(body)
        if problems:
            raise RequestError("; ".join(problems))
        return cls(**{k: v for k, v in body.items() if k not in NOT_SUPPORTED})

    model: str = Field(description="An adapter name, 'base', or 'auto' (MoE routing).")
    max_tokens: int | None = Field(default=None, description="Tokens to generate (default from the server's limits).")
    max_completion_tokens: int | None = Field(default=None, description="Alias of max_tokens (newer OpenAI clients).")
    temperature: float | None = Field(
        default=None, description="0 = greedy. Default: the base model's generation_config, else 1.0 (as OpenAI)."
    )
    top_p: float | None = Field(default=None, description="Default: generation_config, else 1.0.")
    top_k: int | None = Field(default=None, description="vLLM extension: 0 or -1 = off. Default: generation_config.")
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = Field(default=None)
    n: int = Field(default=1, description="Choices per prompt, sharing one prefill.")
    stream: bool = Field(default=False)
    stream_options: StreamOptions | None = Field(default=None, description="{'include_usage': true} adds usage.")
    composition: dict[str, Any] | str | None = Field(
        default=None, description="Extension: the engine's composition object; overrides `model` routing."
    )
    user: str | None = Field(default=None, description="Accepted; logged with the request id.")
    presence_penalty: float = Field(default=0.0, description="In [-2, 2], on tokens already in the output.")
    frequency_penalty: float = Field(default=0.0, description="In [-2, 2], times each token's count in the output.")
    logit_bias: dict[str, float] | None = Field(default=None, description="Token id (as a string) -> bias.")
    response_format: ResponseFormat | None = Field(default=None, description="json_object or json_schema output.")
    # vLLM extensions, with vLLM's meaning
    ignore_eos: bool = Field(default=False, description="vLLM extension: decode exactly max_tokens.")
    repetition_penalty: float | None = Field(
        default=None, description="vLLM extension: > 1 discourages tokens of the prompt and output."
    )
    min_p: float | None = Field(default=None, description="vLLM extension: drop tokens below min_p x the top one.")
    min_tokens: int = Field(default=0, description="vLLM extension: no EOS or stop before this many tokens.")
    stop_token_ids: list[int] | None = Field(default=None, description="vLLM extension: token ids that stop.")
    include_stop_str_in_output: bool = Field(default=False, description="vLLM extension: keep the stop string.")
    skip_special_tokens: bool = Field(default=True, description="vLLM extension: drop special tokens from text.")
    allowed_token_ids: list[int] | None = Field(
        default=None, description="vLLM extension: sample only among these token ids."
    )
    structured_outputs: StructuredOutputs | None = Field(
        default=None, description="vLLM extension: {'json': schema} or {'json_object': true}."
    )
    add_special_tokens: bool | None = Field(
        default=None, description="vLLM extension: add the tokenizer's special tokens (completions: yes, chat: no)."
    )
    request_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._:\-]{1,128}$",
        description="vLLM extension: names the request (response id, logs); else the x-request-id header does.",
    )


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, token ids, or a list of either (one set of n choices per prompt)."
    )
    echo: bool = Field(default=False, description="Return the prompt before the completion (with logprobs: scored).")
    logprobs: int | None = Field(default=None, description="Chosen-token log probabilities plus this many top ones.")


class TextPart(_Body):
    type: Literal["text"] = Field(description="Only text parts: this server serves text models.")
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"] = Field(description="developer is read as system.")
    content: str | list[TextPart] = Field(description="Text, or a list of text parts (joined with newlines).")
    name: str | None = Field(default=None, description="Accepted; not shown to the model.")

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(default=None, description="Return the chosen tokens' log probabilities.")
    top_logprobs: int | None = Field(default=None, description="With logprobs: this many top tokens per step.")
    add_generation_prompt: bool = Field(default=True, description="vLLM extension: end with the assistant's turn.")
    continue_final_message: bool = Field(
        default=False, description="vLLM extension: continue the last (assistant) message instead of a new turn."
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description="vLLM extension: extra variables for the chat template."
    )


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


class CompositionRegistration(_Body):
    """`POST /v1/compositions`: a composition callable by name as `model`, persisted in the managed root."""

    name: str = Field(description="The model name clients will send (may not shadow an adapter).")
    composition: CompositionSpec = Field(description="The composition object, as a request's `composition`.")
    description: str | None = Field(default=None, description="Shown in /v1/models.")
    fit: dict[str, float | int | str] | None = Field(
        default=None, description="Fit report fields (scripts/fit_composition.py writes them)."
    )


class LoadLoraAdapter(_Body):
    """vLLM's `POST /v1/load_lora_adapter`: registers `lora_path` as `lora_name` (as `POST /v1/adapters`)."""

    lora_name: str = Field(description="Adapter name (path-like names allowed, e.g. 'team/refunds').")
    lora_path: str = Field(description="PEFT adapter folder inside one of the app's import_roots.")
    load_inplace: Literal[False] = Field(
        default=False, description="Only false: unload first to replace an adapter (no in-place swap)."
    )


class UnloadLoraAdapter(_Body):
    """vLLM's `POST /v1/unload_lora_adapter`: removes a run-time registered adapter (as `DELETE /v1/adapters`)."""

    lora_name: str = Field(description="The adapter to remove.")
    lora_int_id: int | None = Field(default=None, description="Accepted for vLLM clients; names identify adapters.")


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
