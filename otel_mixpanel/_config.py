"""Settings: each resolved keyword argument → environment variable → default.

A bad value raises :class:`ConfigurationError` at construction naming both the
argument and the variable: an exporter that silently sends nowhere is worse
than an application that refuses to start.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import FrozenSet, Iterable, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from otel_mixpanel import environment_variables as env
from otel_mixpanel._exceptions import ConfigurationError

REGION_HOSTS = {
    "us": "api.mixpanel.com",
    "eu": "api-eu.mixpanel.com",
    "in": "api-in.mixpanel.com",
}
DEFAULT_TIMEOUT = 10.0
DEFAULT_RESOURCE_ATTRIBUTES = ("service.name",)
DEFAULT_SPOOL_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_QUEUE_MAX_BYTES = 64 * 1024 * 1024
# Long enough to ride out a short blip at Mixpanel's backoff (2 s, then 4 s, 8 s,
# each plus 1-5 s of jitter): a fault with 7 s to go is outlasted by the second retry.
DEFAULT_SHUTDOWN_TIMEOUT = 20.0
COMPRESSIONS = ("gzip", "none")
# A token used when none is configured: the pytest plugin sets it for the test
# session (where every destination is a local Mixpanel), so that an application
# that builds its exporters at import can be imported; never set otherwise.
fallback_token: Optional[str] = None


@dataclass(frozen=True)
class Settings:
    """Everything delivery needs to know, resolved and validated."""

    base_url: str
    token: Optional[str] = field(default=None, repr=False)
    project_id: Optional[str] = None
    service_account_username: Optional[str] = None
    service_account_secret: Optional[str] = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    compression: str = "gzip"
    resource_attributes: Tuple[str, ...] = DEFAULT_RESOURCE_ATTRIBUTES
    trace_ids: bool = True
    spool_dir: Optional[str] = None
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    property_allowlist: Optional[FrozenSet[str]] = None
    property_denylist: FrozenSet[str] = frozenset()
    offload: bool = True

    @property
    def uses_service_account(self) -> bool:
        """Whether ``/import`` authenticates with the service account."""
        return self.service_account_username is not None


def _pick(argument: Optional[str], variable: str, environ: Mapping[str, str]) -> Optional[str]:
    if argument is not None:
        if not isinstance(argument, str) or not argument.strip():
            # token="" would otherwise fail later, with a 401, far from the mistake.
            name = variable[len("OTEL_EXPORTER_MIXPANEL_"):].lower()
            raise ConfigurationError(
                f"{_names(name, variable)} must be a non-empty string, not {argument!r}"
            )
        return argument
    value = environ.get(variable, "").strip()
    return value or None


def _names(argument: str, variable: str) -> str:
    return f"{argument}= (or {variable})"


def resolve_base_url(
    region: Optional[str], api_host: Optional[str], environ: Mapping[str, str]
) -> str:
    """Turn a region or an API host into the base URL every request starts with.

    >>> resolve_base_url("eu", None, {})
    'https://api-eu.mixpanel.com'
    >>> resolve_base_url(None, "http://127.0.0.1:8080/", {})
    'http://127.0.0.1:8080'
    """
    host = _pick(api_host, env.OTEL_EXPORTER_MIXPANEL_API_HOST, environ)
    if host is None:
        chosen = (_pick(region, env.OTEL_EXPORTER_MIXPANEL_REGION, environ) or "us").lower()
        if chosen not in REGION_HOSTS:
            raise ConfigurationError(
                f"{_names('region', env.OTEL_EXPORTER_MIXPANEL_REGION)} must be one of "
                f"{', '.join(REGION_HOSTS)}, not {chosen!r}"
            )
        return f"https://{REGION_HOSTS[chosen]}"
    url = host if "://" in host else f"https://{host}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{_names('api_host', env.OTEL_EXPORTER_MIXPANEL_API_HOST)} must be a host or an "
            f"http(s) URL, not {host!r}"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigurationError(
            f"{_names('api_host', env.OTEL_EXPORTER_MIXPANEL_API_HOST)} uses plain http for "
            f"{parts.hostname!r}; credentials travel only over https except to loopback hosts"
        )
    return url.rstrip("/")


def is_loopback(hostname: str) -> bool:
    """Whether *hostname* names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def _resolve_seconds(
    timeout: Optional[float], argument: str, variable: str, default: float,
    environ: Mapping[str, str],
) -> float:
    shown: object = timeout
    if timeout is None:
        raw = environ.get(variable, "").strip()
        if not raw:
            return default
        shown = raw
        try:
            timeout = float(raw)
        except ValueError:
            timeout = float("nan")
    elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        timeout = float("nan")  # "5" or True: refused, named below
    if not timeout > 0 or timeout == float("inf"):
        raise ConfigurationError(
            f"{_names(argument, variable)} must be a positive number of seconds, not {shown!r}"
        )
    return float(timeout)


def _resolve_compression(compression: Optional[str], environ: Mapping[str, str]) -> str:
    chosen = (_pick(compression, env.OTEL_EXPORTER_MIXPANEL_COMPRESSION, environ) or "gzip").lower()
    if chosen not in COMPRESSIONS:
        raise ConfigurationError(
            f"{_names('compression', env.OTEL_EXPORTER_MIXPANEL_COMPRESSION)} must be one of "
            f"{', '.join(COMPRESSIONS)}, not {chosen!r}"
        )
    return chosen


def _resolve_resource_attributes(
    names: Optional[Sequence[str]], environ: Mapping[str, str]
) -> Tuple[str, ...]:
    if names is not None:
        return tuple(names)
    raw = environ.get(env.OTEL_EXPORTER_MIXPANEL_RESOURCE_ATTRIBUTES)
    if raw is None:
        return DEFAULT_RESOURCE_ATTRIBUTES
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _resolve_names(
    names: Optional[Iterable[str]], variable: str, environ: Mapping[str, str]
) -> Optional[FrozenSet[str]]:
    if names is not None:
        return frozenset(names)
    raw = environ.get(variable)
    if raw is None or not raw.strip():
        return None
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


def _resolve_bytes(
    value: Optional[int], argument: str, variable: str, default: int,
    environ: Mapping[str, str],
) -> int:
    shown: object = value
    if value is None:
        raw = environ.get(variable, "").strip()
        if not raw:
            return default
        shown = raw
        try:
            value = int(raw)
        except ValueError:
            value = 0
    elif isinstance(value, bool) or not isinstance(value, int):
        value = 0  # "lots", 1.5 or True: refused, named below
    if value <= 0:
        raise ConfigurationError(
            f"{_names(argument, variable)} must be a positive whole number of bytes, "
            f"not {shown!r}"
        )
    return value


def _resolve_flag(
    value: Optional[bool], variable: str, default: bool, environ: Mapping[str, str]
) -> bool:
    if value is not None:
        return value
    raw = environ.get(variable, "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    raise ConfigurationError(f"{variable} must be true or false, not {raw!r}")


def resolve_settings(
    *,
    token: Optional[str] = None,
    project_id: Optional[str] = None,
    service_account_username: Optional[str] = None,
    service_account_secret: Optional[str] = None,
    region: Optional[str] = None,
    api_host: Optional[str] = None,
    timeout: Optional[float] = None,
    compression: Optional[str] = None,
    resource_attributes: Optional[Sequence[str]] = None,
    trace_ids: Optional[bool] = None,
    spool_dir: Optional[str] = None,
    spool_max_bytes: Optional[int] = None,
    property_allowlist: Optional[Iterable[str]] = None,
    property_denylist: Optional[Iterable[str]] = None,
    queue_max_bytes: Optional[int] = None,
    shutdown_timeout: Optional[float] = None,
    offload: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Settings:
    """Resolve every setting, raising :class:`ConfigurationError` for a bad one."""
    environ = os.environ if environ is None else environ
    token = _pick(token, env.OTEL_EXPORTER_MIXPANEL_TOKEN, environ)
    project_id = _pick(project_id, env.OTEL_EXPORTER_MIXPANEL_PROJECT_ID, environ)
    username = _pick(
        service_account_username, env.OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME, environ
    )
    secret = _pick(
        service_account_secret, env.OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET, environ
    )
    if token is None and username is None:
        token = fallback_token  # set by the pytest plugin for the test session only
    if token is None and username is None:
        raise ConfigurationError(
            "no Mixpanel credentials: set the project token (token= or "
            f"{env.OTEL_EXPORTER_MIXPANEL_TOKEN}), or a service account "
            f"({env.OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME}, "
            f"{env.OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET} and "
            f"{env.OTEL_EXPORTER_MIXPANEL_PROJECT_ID})"
        )
    if (username is None) != (secret is None):
        user_names = _names(
            "service_account_username", env.OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME
        )
        secret_names = _names(
            "service_account_secret", env.OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET
        )
        raise ConfigurationError(f"a service account needs both {user_names} and {secret_names}")
    if username is not None and project_id is None:
        raise ConfigurationError(
            "a service account needs the project id: "
            f"{_names('project_id', env.OTEL_EXPORTER_MIXPANEL_PROJECT_ID)}"
        )
    return Settings(
        base_url=resolve_base_url(region, api_host, environ),
        token=token,
        project_id=project_id,
        service_account_username=username,
        service_account_secret=secret,
        timeout=_resolve_seconds(
            timeout, "timeout", env.OTEL_EXPORTER_MIXPANEL_TIMEOUT, DEFAULT_TIMEOUT, environ
        ),
        compression=_resolve_compression(compression, environ),
        resource_attributes=_resolve_resource_attributes(resource_attributes, environ),
        trace_ids=_resolve_flag(trace_ids, env.OTEL_EXPORTER_MIXPANEL_TRACE_IDS, True, environ),
        spool_dir=_pick(spool_dir, env.OTEL_EXPORTER_MIXPANEL_SPOOL_DIR, environ),
        spool_max_bytes=_resolve_bytes(
            spool_max_bytes, "spool_max_bytes", env.OTEL_EXPORTER_MIXPANEL_SPOOL_MAX_BYTES,
            DEFAULT_SPOOL_MAX_BYTES, environ,
        ),
        queue_max_bytes=_resolve_bytes(
            queue_max_bytes, "queue_max_bytes", env.OTEL_EXPORTER_MIXPANEL_QUEUE_MAX_BYTES,
            DEFAULT_QUEUE_MAX_BYTES, environ,
        ),
        shutdown_timeout=_resolve_seconds(
            shutdown_timeout, "shutdown_timeout", env.OTEL_EXPORTER_MIXPANEL_SHUTDOWN_TIMEOUT,
            DEFAULT_SHUTDOWN_TIMEOUT, environ,
        ),
        property_allowlist=_resolve_names(
            property_allowlist, env.OTEL_EXPORTER_MIXPANEL_PROPERTY_ALLOWLIST, environ
        ),
        property_denylist=_resolve_names(
            property_denylist, env.OTEL_EXPORTER_MIXPANEL_PROPERTY_DENYLIST, environ
        ) or frozenset(),
        offload=_resolve_offload(offload, environ),
    )


def _resolve_offload(argument: Optional[str], environ: Mapping[str, str]) -> bool:
    value = _pick(argument, env.OTEL_EXPORTER_MIXPANEL_OFFLOAD, environ)
    if value is None:
        return True
    choice = value.strip().lower()
    if choice not in ("auto", "off"):
        names = _names("offload", env.OTEL_EXPORTER_MIXPANEL_OFFLOAD)
        raise ConfigurationError(f"{names} must be 'auto' or 'off', not {value!r}")
    return choice == "auto"
