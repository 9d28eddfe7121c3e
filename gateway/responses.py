"""OpenAI response bodies and SSE events for a planned request and the replica's `Result`.

Everything the client sees besides errors (`gateway.http_errors`) is shaped here, so the completions
and chat endpoints, streamed or not, stay consistent with each other and with OpenAI's clients.
"""

from __future__ import annotations

import json

from loraplex.experts.request import Result
from loraplex.gateway.planner import Plan


def _response(plan: Plan, result: Result, prefix: str, obj: str, choice: dict) -> dict:
    """The body both endpoints share; `choice` holds what differs (`text` or `message`)."""
    choice.update(index=0, finish_reason=result.finish_reason, logprobs=None)
    if result.stages:
        choice["stages"] = result.stages
    return {
        "id": f"{prefix}-{plan.id}",
        "object": obj,
        "created": plan.created,
        "model": plan.model,
        "choices": [choice],
        "usage": result.usage,
        "routing": plan.routing,
    }


def completion_response(plan: Plan, result: Result) -> dict:
    return _response(plan, result, "cmpl", "text_completion", {"text": result.text})


def chat_response(plan: Plan, result: Result) -> dict:
    message = {"role": "assistant", "content": result.text}
    return _response(plan, result, "chatcmpl", "chat.completion", {"message": message})


def stream_chunk(
    plan: Plan, chat: bool, delta: str | None, finish: str | None = None, usage: dict | None = None, first: bool = False
) -> str:
    """One SSE `data:` line. `delta=None` with `usage` is the final usage-only chunk."""
    usage_only = usage is not None and delta is None and finish is None
    if chat:
        d: dict = {"role": "assistant", "content": delta or ""} if first else ({"content": delta} if delta else {})
        choices = [] if usage_only else [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}]
        body = {
            "id": f"chatcmpl-{plan.id}",
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "choices": choices,
        }
    else:
        choices = [] if usage_only else [{"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}]
        body = {
            "id": f"cmpl-{plan.id}",
            "object": "text_completion",
            "created": plan.created,
            "model": plan.model,
            "choices": choices,
        }
    if usage is not None:
        body["usage"] = usage
    if first:
        body["routing"] = plan.routing
    return f"data: {json.dumps(body)}\n\n"


def stream_error(error_body: dict) -> str:
    """An error after the stream has started (status 200 is already sent): an SSE event in the OpenAI error shape."""
    return f"data: {json.dumps(error_body)}\n\n"


DONE = "data: [DONE]\n\n"
