"""API keys for the ingress: read once at start from an environment variable or a file named in the
config (never from the config body), compared in constant time. The ingress maps the errors to 401/403."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from loraplex.config.app import AuthConfig
from loraplex.experts.errors import AuthenticationError, ConfigError, PermissionDeniedError


def _read_key(env: str | None, file: str | None, what: str, problems: list[str]) -> str | None:
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            problems.append(f"{what}: environment variable {env!r} is not set or empty")
        return value or None
    if file:
        try:
            value = Path(file).read_text().splitlines()[0].strip() if Path(file).is_file() else ""
        except (OSError, IndexError):
            value = ""
        if not value:
            problems.append(f"{what}: key file {file!r} is missing or empty")
        return value or None
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


class AccessControl:
    def __init__(self, cfg: AuthConfig, http_host: str | None = None):
        """`http_host`: where Serve's HTTP proxies listen. A host reachable from other machines with no API key
        refuses to start unless `auth.allow_public_without_key` says it is meant (an open server by accident
        is the easiest way to leak every adapter's outputs)."""
        problems: list[str] = []
        self.api_key = _read_key(cfg.api_key_env, cfg.api_key_file, "api key", problems)
        self.admin_key = _read_key(cfg.admin_key_env, cfg.admin_key_file, "admin key", problems)
        exposed = http_host is not None and not is_loopback(http_host)
        if exposed and not (cfg.api_key_env or cfg.api_key_file) and not cfg.allow_public_without_key:
            problems.append(
                f"HTTP host {http_host!r} is reachable from other machines but no API key is configured; set "
                "auth.api_key_env or auth.api_key_file, bind http_options.host to 127.0.0.1, or set "
                "auth.allow_public_without_key: true"
            )
        if problems:
            raise ConfigError(problems)

    @staticmethod
    def _bearer(header: str | None) -> str | None:
        if header and header.lower().startswith("bearer "):
            return header[7:].strip()
        return None

    def check(self, authorization: str | None) -> None:
        """Any API route. No key configured: open (the server then binds to loopback, see docs/security.md)."""
        if self.api_key is None:
            return
        token = self._bearer(authorization)
        if token is None:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        if not (
            hmac.compare_digest(token, self.api_key)
            or (self.admin_key is not None and hmac.compare_digest(token, self.admin_key))
        ):
            raise AuthenticationError("invalid API key")

    def check_admin(self, authorization: str | None) -> None:
        """Adapter registration. With API keys but no admin key configured, registration is refused."""
        if self.admin_key is None:
            if self.api_key is None:
                return
            raise PermissionDeniedError(
                "adapter registration needs an admin key; none is configured (auth.admin_key_env / admin_key_file)"
            )
        token = self._bearer(authorization)
        if token is None:
            raise AuthenticationError("missing admin key: send 'Authorization: Bearer <admin key>'")
        if not hmac.compare_digest(token, self.admin_key):
            raise PermissionDeniedError("this key may not register or remove adapters; use the admin key")
