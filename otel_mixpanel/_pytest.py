"""The pytest plugin's implementation (see :mod:`otel_mixpanel.pytest_plugin`)."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest

from otel_mixpanel import _compat, _config
from otel_mixpanel._config import Settings, is_loopback
from otel_mixpanel._configure import MixpanelPipeline, configure
from otel_mixpanel._queue import _registry
from otel_mixpanel.testing import LocalMixpanel

__all__ = ["MixpanelCapture", "mixpanel_capture"]

_logger = logging.getLogger("otel_mixpanel")
PLACEHOLDER_TOKEN = "otel-mixpanel-pytest"
_REAL = "mixpanel_real_destinations"


class _Session:
    """The session's one local Mixpanel, started when first needed."""

    lock = threading.Lock()
    server: Optional[LocalMixpanel] = None
    owning = False
    stop_registered = False
    redirected: ClassVar[List[str]] = []

    @classmethod
    def local(cls) -> LocalMixpanel:
        with cls.lock:
            if cls.server is None:
                cls.server = LocalMixpanel(token=PLACEHOLDER_TOKEN).start()
            return cls.server


def _to_local(settings: Settings) -> Settings:
    """A destination off this machine becomes the session's local Mixpanel."""
    host = urlsplit(settings.base_url).hostname or ""
    if is_loopback(host):
        return settings
    server = _Session.local()
    if settings.base_url not in _Session.redirected:
        _Session.redirected.append(settings.base_url)
        _logger.info(
            "otel_mixpanel pytest plugin: an exporter aimed at %s sends to the local "
            "Mixpanel at %s during the tests (mixpanel_capture shows what arrives)",
            settings.base_url, server.url,
        )
    username, secret = server.service_account
    with_account = settings.uses_service_account
    return dataclasses.replace(
        settings, base_url=server.url, token=server.token,
        project_id=server.project_id if with_account else settings.project_id,
        service_account_username=username if with_account else None,
        service_account_secret=secret if with_account else None,
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(_REAL, "let otel_mixpanel exporters reach real Mixpanel hosts during tests",
                  type="bool", default=False)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Before any conftest.py is imported: an application imported there is
    # redirected too.
    _own_destinations(early_config)


def pytest_configure(config: pytest.Config) -> None:
    _own_destinations(config)


def _own_destinations(config: pytest.Config) -> None:
    if _Session.owning:
        return
    try:
        real = bool(config.getini(_REAL))
    except ValueError:  # the option is not registered yet: our default
        real = False
    if real:
        return
    _Session.owning = True
    if not _Session.stop_registered:
        _Session.stop_registered = True
        atexit.register(_stop_server)
    # Process-local, unlike an environment variable: a subprocess a test starts
    # is not given a token that would aim it at the real Mixpanel.
    _config.fallback_token = PLACEHOLDER_TOKEN
    _registry.redirect(_to_local)


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _Session.owning:
        return
    _Session.owning = False
    _registry.redirect(None)
    _config.fallback_token = None


def _stop_server() -> None:
    """At exit, after the application's providers (their exit handlers were
    registered later, so they run first): their last records still land."""
    with _Session.lock:
        server, _Session.server = _Session.server, None
    if server is not None:
        server.stop()


class MixpanelCapture:
    """What the local Mixpanel received during one test, read after a flush."""

    def __init__(self, server: LocalMixpanel, pipeline: MixpanelPipeline) -> None:
        self.server = server
        self.pipeline = pipeline

    def flush(self) -> None:
        """Export everything queued (bounded: 10 s at most)."""
        self.pipeline.force_flush()

    def events(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """Events received (deduplicated as Mixpanel does), optionally by name."""
        self.flush()
        if name is None:
            return self.server.unique_events()
        return self.server.events_named(name)

    def event(self, name: str) -> Dict[str, Any]:
        """The one event called *name*; fails the test unless there is exactly one,
        saying what did arrive."""
        found = self.events(name)
        assert len(found) == 1, (
            f"expected one {name!r} event, got {len(found)}; received: {self._summary()}"
        )
        return found[0]

    def profile(self, distinct_id: str) -> Dict[str, Any]:
        """The user profile after every update received so far ({} when none)."""
        self.flush()
        return self.server.profiles.get(distinct_id, {})

    def group(self, group_key: str, group_id: str) -> Dict[str, Any]:
        """The group profile after every update received so far ({} when none)."""
        self.flush()
        return self.server.groups.get((group_key, group_id), {})

    def rejected(self) -> List[Any]:
        """Records the local Mixpanel refused, with its reasons."""
        self.flush()
        return self.server.rejected

    def _summary(self) -> str:
        received = [
            f"{e.get('event')!r} (distinct_id {e.get('properties', {}).get('distinct_id')!r})"
            for e in self.server.unique_events()
        ]
        profiles = sorted(self.server.profiles)
        return (", ".join(received) or "no events") + (
            f"; profiles of {', '.join(map(repr, profiles))}" if profiles else ""
        ) + (f"; {len(self.server.rejected)} refused" if self.server.rejected else "")


@pytest.fixture(scope="session")
def _otel_mixpanel_session() -> Iterator[Tuple[LocalMixpanel, MixpanelPipeline]]:
    server = _Session.local()
    try:
        _compat.logging_handler_class()
        logging = True
    except ImportError:  # stdlib logging needs opentelemetry-instrumentation-logging
        logging = False
    pipeline = configure(
        token=server.token, api_host=server.url, logging=logging,
        schedule_delay_millis=50,
    )
    try:
        yield server, pipeline
    finally:
        pipeline.shutdown()


@pytest.fixture
def mixpanel_capture(
    _otel_mixpanel_session: Tuple[LocalMixpanel, MixpanelPipeline],
) -> MixpanelCapture:
    """A :class:`MixpanelCapture` that starts empty for this test."""
    server, pipeline = _otel_mixpanel_session
    pipeline.force_flush()  # what earlier tests left queued lands before the reset
    server.clear()
    return MixpanelCapture(server, pipeline)
