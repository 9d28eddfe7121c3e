"""OpenAI response bodies and SSE events for a planned request and the replica's `Result`.

Everything the client sees besides errors (`gateway.http_errors`) is shaped here, so the completions
and chat endpoints, streamed or not, stay consistent with each other and with OpenAI's clients.
"""

from __future__ import annotations

import json

from loraplex.experts.logprobs import TokenLogprob
from loraplex.experts.request import Choice, Result
from loraplex.gateway.planner import Plan


def _completion_logprobs(entries: list[TokenLogprob] | None) -> dict | None:
    """OpenAI's completions shape: parallel lists, top alternatives as {token: logprob} (None for the first
    token of an echoed prompt, which nothing predicts)."""
    if entries is None:
        return None
    offsets, at = [], 0
    for t in entries:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in entries],
        "token_logprobs": [t.logprob for t in entries],
        "top_logprobs": [dict(t.top) if t.top is not None else None for t in entries],
        "text_offset": offsets,
    }


def _chat_logprobs(c: Choice) -> dict | None:
    """OpenAI's chat shape: one entry per token with its bytes and its top alternatives."""
    if c.logprobs is None:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(tok, lp) for tok, lp in t.top]} for t in c.logprobs
        ]
    }


def usage(results: list[Result]) -> dict[str, int]:
    """The usage of a request: its parts' (one per prompt) summed."""
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _response(plan: Plan, results: list[Result], prefix: str, obj: str, choices: list[dict]) -> dict:
    """The body both endpoints share; `choices` hold what differs (`text` or `message`)."""
    if results[0].stages:
        choices[0]["stages"] = results[0].stages
    return {
        "id": f"{prefix}-{plan.id}",
        "object": obj,
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": usage(results),
        "routing": plan.routing,
    }


def completion_response(plan: Plan, results: list[Result]) -> dict:
    """One choice per prompt and `n` (index = prompt x n + choice, as OpenAI and vLLM number them); with echo,
    the prompt's text (and its scored tokens) comes first."""
    choices = []
    many = len(plan.parts) > 1
    for part, result in zip(plan.parts, results):
        for c in result.choices:
            text, lp = c.text, c.logprobs
            if part.echo is not None:
                text = part.echo + text
                if lp is not None:
                    lp = (result.prompt_logprobs or []) + lp
            choice = {"index": len(choices), "text": text, "finish_reason": c.finish_reason}
            choice["logprobs"] = _completion_logprobs(lp)
            if many:
                choice["routing"] = part.routing  # each prompt was routed on its own
            choices.append(choice)
    return _response(plan, results, "cmpl", "text_completion", choices)


def chat_response(plan: Plan, results: list[Result]) -> dict:
    (result,) = results
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": c.finish_reason,
            "logprobs": _chat_logprobs(c),
        }
        for i, c in enumerate(result.choices)
    ]
    return _response(plan, results, "chatcmpl", "chat.completion", choices)


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
