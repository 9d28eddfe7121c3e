"""Typed errors of the engine.

Every user-reachable failure raises one of these, with a message that names the bad value and the
valid choices, so the HTTP ingress can map the type to a status code (4xx for the client's
mistakes, 5xx for ours) without parsing strings.
"""

from __future__ import annotations

from typing import Iterable


class LoraplexError(Exception):
    """Base class of every error loraplex raises on purpose."""


class RequestError(LoraplexError, ValueError):
    """The request itself is wrong (HTTP 400/404/422): bad composition, sampling or prompt."""


class UnknownAdapterError(RequestError):
    """A request names an adapter that no configured root holds."""

    def __init__(self, name: str, available: Iterable[str]):
        self.name = name
        self.available = sorted(available)
        super().__init__(f"unknown adapter {name!r}; available adapters: {self.available}")


class CompositionError(RequestError):
    """A composition spec is malformed (mode, weights, templates, top_k)."""


class SamplingError(RequestError):
    """A sampling parameter is out of range."""


class AdapterNameError(RequestError):
    """An adapter name is not a plain relative name inside a root (`../x`, `/abs`, symlinks out)."""


class ConflictError(RequestError):
    """The adapter exists already, or is pinned / not removable at run time (HTTP 409)."""


class AdapterValidationError(LoraplexError):
    """An adapter on disk does not fit the base model. Carries every problem found, not just the first."""

    def __init__(self, name: str, problems: list[str]):
        self.name = name
        self.problems = list(problems)
        joined = "\n  - ".join(self.problems)
        super().__init__(f"adapter {name!r} is invalid ({len(self.problems)} problem(s)):\n  - {joined}")


class AuthenticationError(LoraplexError):
    """Missing or wrong API key (HTTP 401)."""


class PermissionDeniedError(LoraplexError):
    """Valid key, but not allowed to do this, e.g. adapter registration without the admin key (HTTP 403)."""


class PayloadTooLargeError(RequestError):
    """Request body or adapter file over the configured size (HTTP 413)."""


class CapacityError(LoraplexError):
    """Not enough capacity now: more distinct adapters than device slots, or a full bounded queue (HTTP 503 + Retry-After)."""


class ConfigError(LoraplexError, ValueError):
    """The engine configuration is inconsistent; lists every problem at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        joined = "\n  - ".join(self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n  - {joined}")
