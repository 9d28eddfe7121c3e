"""Typed errors of loraplex, each carrying the HTTP status and OpenAI error type a client should see.

Every user-reachable failure raises one of these with a message that names the bad value and the valid
choices. They cross process hops (expert replica -> ingress) as values: a replica answers a request
with either a `Result` or one of these instances, pickled by Ray like any other return value, so the
ingress keeps the exact class and maps it to HTTP in one place (`loraplex.gateway.http_errors`). No
class-name strings on the wire, and a `CompositionError` is a 400 wherever it was raised.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import ClassVar


def bullet_list(problems: list[str]) -> str:
    """Every problem on its own line, the way all "lists every problem at once" errors print them."""
    return "\n  - " + "\n  - ".join(problems)


def _rebuild(cls: type[LoraplexError], message: str, state: dict) -> LoraplexError:
    """Unpickle without calling the subclass's `__init__` (whose signature may not be `(message,)`)."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class LoraplexError(Exception):
    """Base class of every error loraplex raises on purpose."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    retry_after_s: ClassVar[int | None] = None  # set: the client may retry after this many seconds (503s)

    def __reduce__(self):
        return _rebuild, (type(self), str(self), dict(self.__dict__))


class InternalError(LoraplexError):
    """A failure on our side that no typed check anticipated (a bug, or the model call failing): HTTP 500."""


class RequestError(LoraplexError, ValueError):
    """The request itself is wrong: bad composition, sampling or prompt (HTTP 400)."""

    status = 400
    error_type = "invalid_request_error"


class UnknownAdapterError(RequestError):
    """A request names an adapter (or model) that no configured root holds (HTTP 404)."""

    status = 404
    error_type = "not_found_error"

    SHOWN: ClassVar[int] = 20  # with thousands of adapters, the message names the closest few and the count

    def __init__(self, name: str, available: Iterable[str]):
        self.name = name
        names = sorted(available)
        if len(names) <= self.SHOWN:
            self.available = names
            super().__init__(f"unknown adapter {name!r}; available adapters: {names}")
            return
        close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
        self.available = close + [n for n in names[: self.SHOWN] if n not in close][: self.SHOWN - len(close)]
        super().__init__(
            f"unknown adapter {name!r}; closest: {close}; {len(names)} adapters in all, e.g. {self.available[:10]} "
            "(GET /v1/models lists them)"
        )


class UnknownCompositionError(RequestError):
    """A named composition that neither the app config nor a run-time registration defines (HTTP 404)."""

    status = 404
    error_type = "not_found_error"

    def __init__(self, name: str, available: Iterable[str]):
        self.name = name
        super().__init__(f"unknown composition {name!r}; compositions: {sorted(available)}")


class HubAdapterError(RequestError):
    """A hub adapter reference that cannot be fetched: no such repo or revision, or (offline) not in the
    local Hugging Face cache (HTTP 404)."""

    status = 404
    error_type = "not_found_error"


class CompositionError(RequestError):
    """A composition spec is malformed or can never fit this replica (mode, weights, templates, top_k, slots)."""


class SamplingError(RequestError):
    """A sampling parameter is out of range."""


class AdapterNameError(RequestError):
    """An adapter name is not a plain relative name inside a root (`../x`, `/abs`, symlinks out)."""


class RouteNotFoundError(RequestError):
    """No such HTTP route (HTTP 404), with the routes there are."""

    status = 404
    error_type = "not_found_error"


class MethodNotAllowedError(RequestError):
    """The route exists, with other methods (HTTP 405)."""

    status = 405


class ConflictError(RequestError):
    """The adapter exists already, or is pinned / not removable at run time (HTTP 409)."""

    status = 409
    error_type = "conflict_error"


class PayloadTooLargeError(RequestError):
    """Request body or adapter file over the configured size (HTTP 413)."""

    status = 413


class AdapterValidationError(LoraplexError):
    """An adapter on disk does not fit the base model (HTTP 422). Carries every problem found, not just the first."""

    status = 422
    error_type = "invalid_adapter"

    def __init__(self, name: str, problems: list[str]):
        self.name = name
        self.problems = list(problems)
        super().__init__(f"adapter {name!r} is invalid ({len(self.problems)} problem(s)):{bullet_list(self.problems)}")


class AuthenticationError(LoraplexError):
    """Missing or wrong API key (HTTP 401)."""

    status = 401
    error_type = "authentication_error"


class PermissionDeniedError(LoraplexError):
    """Valid key, but not allowed to do this, e.g. adapter registration without the admin key (HTTP 403)."""

    status = 403
    error_type = "permission_error"


class CapacityError(LoraplexError):
    """Not enough capacity *now* (a full bounded queue): HTTP 503 with Retry-After. Never for a request that can
    never fit; that is a `CompositionError` naming the limit."""

    status = 503
    error_type = "overloaded_error"
    retry_after_s = 1


class UnavailableError(CapacityError):
    """The replica serving the request went away and the retries ran out (HTTP 503, retry a little later)."""

    retry_after_s = 2


class ConfigError(LoraplexError, ValueError):
    """The configuration is inconsistent; lists every problem at once."""

    error_type = "configuration_error"

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):{bullet_list(self.problems)}")


class DatasetError(LoraplexError, ValueError):
    """Training data for the router is unusable; lists every problem at once, with line numbers (HTTP 400)."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the routing data:{bullet_list(self.problems)}")


class RouterReloadError(LoraplexError):
    """Router files on disk could not replace the serving router; the old one keeps serving (HTTP 422)."""

    status = 422
    error_type = "invalid_router"


def as_error(e: BaseException) -> LoraplexError:
    """Typed errors pass through; anything else is our bug, answered as a 500 that names it."""
    return e if isinstance(e, LoraplexError) else InternalError(f"internal error: {type(e).__name__}: {e}")
