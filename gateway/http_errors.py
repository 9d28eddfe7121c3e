"""The one place errors become HTTP: status, OpenAI error body `{"error": {message, type, param, code}}`, headers.

Typed errors carry their own status and type (`experts.errors`); request-body validation errors name
the field; anything else is a 500 that names the exception. The ingress turns Ray's own exceptions
(back-pressure, a replica gone) into typed errors before it calls `http_error`, so this module has no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from loraplex.experts.errors import LoraplexError


@dataclass(frozen=True)
class HttpError:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


def error_body(status: int, message: str, type_: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


def http_error(e: BaseException) -> HttpError:
    if isinstance(e, ValidationError):
        errors = e.errors()
        param = ".".join(str(p) for p in errors[0]["loc"])
        msgs = "; ".join(f"{'.'.join(str(p) for p in er['loc'])}: {er['msg']}" for er in errors)
        return HttpError(400, error_body(400, msgs, "invalid_request_error", param))
    if isinstance(e, LoraplexError):
        headers = {"Retry-After": str(e.retry_after_s)} if e.retry_after_s is not None else {}
        return HttpError(e.status, error_body(e.status, str(e), e.error_type), headers)
    return HttpError(500, error_body(500, f"internal error: {type(e).__name__}: {e}", "internal_error"))
