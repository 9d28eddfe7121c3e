"""Reading a request body safely: size limit enforced while reading, bounded nesting, valid Unicode only.

Why each check: a body read in full before its size check lets one client hold any amount of ingress
memory; JSON nested 100,000 deep makes the parser raise `RecursionError` (a 500); and a lone UTF-16
surrogate (`"\\ud800"`, legal in JSON text) is not encodable as UTF-8, so the tokenizer raises on the
replica's engine thread. All of these are the client's mistakes: 413 or 400 here, before any routing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TypeVar

from pydantic import BaseModel

from loraplex.experts.errors import PayloadTooLargeError, RequestError

M = TypeVar("M", bound=BaseModel)

MAX_JSON_DEPTH = 32  # the deepest request body we accept (a chain composition needs 5)


async def read_limited(chunks: AsyncIterator[bytes], limit: int, content_length: str | None = None) -> bytes:
    """The body, refusing (413) as soon as it exceeds `limit` bytes: a declared length first, then while reading."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise PayloadTooLargeError(f"request body has {int(content_length)} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def check_json_value(value: object, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise `RequestError` for nesting deeper than `max_depth` or strings that are not valid Unicode (iterative)."""
    stack: list[tuple[object, int, str]] = [(value, 0, "body")]
    while stack:
        node, depth, where = stack.pop()
        if depth > max_depth:
            raise RequestError(f"request body is nested deeper than {max_depth} levels (at {where})")
        if isinstance(node, str):
            _check_text(node, where)
        elif isinstance(node, dict):
            for k, v in node.items():
                _check_text(k, where)
                stack.append((v, depth + 1, f"{where}.{k}"))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))


def _check_text(s: str, where: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = s[e.start : e.end].encode("unicode_escape").decode()
        raise RequestError(
            f"{where}: string holds a lone UTF-16 surrogate ({bad}) at index {e.start}; send valid Unicode text"
        ) from None


def parse_json(raw: bytes) -> dict:
    """A JSON object from the raw body (400 for bad JSON, bad UTF-8, deep nesting, lone surrogates)."""
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise RequestError(f"request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # bad JSON or invalid UTF-8
        raise RequestError(f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError(f"body must be a JSON object, got {type(body).__name__}")
    check_json_value(body)
    return body


def parse_body(raw: bytes, model: type[M]) -> M:
    """The body as `model`; models with their own `from_body` (the OpenAI requests) check more first."""
    body = parse_json(raw)
    from_body = getattr(model, "from_body", None)
    return from_body(body) if from_body is not None else model(**body)
