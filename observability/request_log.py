"""One structured access line per request, and request ids.

The id is the client's `x-request-id` (Serve's proxy makes one when it is absent and returns it in the
response header), or the body's vLLM-style `request_id` when given. It is the OpenAI response id
(`cmpl-<id>`), travels to the expert replica in the payload (the vLLM engine's request id, so vLLM's own
log lines carry it too) and is in this line. Lines go to the `ray.serve` logger, so they land in the
replica's Serve log with Serve's fields (replica, route) and in JSON when `logging_config.encoding` is JSON.
"""

from __future__ import annotations

import json
import re
import uuid

_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id(header: str | None) -> str:
    """The client's id when it is a sane token (letters, digits, `._:-`, at most 128), else a new one."""
    return header if header and _ID.match(header) else uuid.uuid4().hex


def access_line(
    *,
    request_id: str,
    route: str,
    status: int,
    latency_s: float,
    model: str | None = None,
    adapter: str | None = None,
    group: str | None = None,
    mode: str | None = None,
    stream: bool = False,
    usage: dict | None = None,
    timing=None,
    user: str | None = None,
) -> str:
    """The JSON text of one request's access record (the `experts.request.Timing` of its first prompt)."""
    record = {
        "event": "access",
        "request_id": request_id,
        "route": route,
        "status": status,
        "model": model,
        "adapter": adapter,
        "group": group,
        "mode": mode,
        "stream": stream,
        "prompt_tokens": (usage or {}).get("prompt_tokens"),
        "completion_tokens": (usage or {}).get("completion_tokens"),
        "latency_ms": round(latency_s * 1000, 1),
        "queue_ms": _ms(getattr(timing, "queue_s", None)),
        "ttft_ms": _ms(getattr(timing, "ttft_s", None)),
        "tpot_ms": _ms(getattr(timing, "tpot_s", None)),
        "user": user,
    }
    return json.dumps(record)


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 2)
