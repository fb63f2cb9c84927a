"""pytest plugin: test your own Mixpanel tagging against a local Mixpanel.

Installed with the package (entry point ``pytest11``); the fixture
``mixpanel_capture`` starts a local Mixpanel once per session, points
:func:`otel_mixpanel.configure` at it (on the global providers, as your
application uses them) and hands each test a fresh view of what arrived::

    def test_signup_is_tracked(mixpanel_capture):
        sign_up("user-1", plan="pro")            # your code, tagging spans or logs
        assert mixpanel_capture.event("Signed Up")["properties"]["plan"] == "pro"
        assert mixpanel_capture.profile("user-1")["plan"] == "pro"

Every accessor flushes the pipeline first, so nothing is still queued when it
answers. stdlib ``logging`` records are hooked too when
``opentelemetry-instrumentation-logging`` is installed; structlog events arrive
when your chain contains :class:`otel_mixpanel.structlog.MixpanelProcessor`.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from otel_mixpanel._configure import MixpanelPipeline, configure
from otel_mixpanel.testing import LocalMixpanel

__all__ = ["MixpanelCapture", "mixpanel_capture"]


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
        """The one event called *name*; fails the test unless there is exactly one."""
        found = self.events(name)
        assert len(found) == 1, f"expected one {name!r} event, got {len(found)}"
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


@pytest.fixture(scope="session")
def _otel_mixpanel_session() -> Iterator[Tuple[LocalMixpanel, MixpanelPipeline]]:
    server = LocalMixpanel().start()
    logging_handler = importlib.util.find_spec("opentelemetry.instrumentation.logging")
    pipeline = configure(
        token=server.token, api_host=server.url, logging=logging_handler is not None,
        schedule_delay_millis=50,
    )
    try:
        yield server, pipeline
    finally:
        pipeline.shutdown()
        server.stop()


@pytest.fixture
def mixpanel_capture(
    _otel_mixpanel_session: Tuple[LocalMixpanel, MixpanelPipeline],
) -> MixpanelCapture:
    """A :class:`MixpanelCapture` that starts empty for this test."""
    server, pipeline = _otel_mixpanel_session
    pipeline.force_flush()  # what earlier tests left queued lands before the reset
    server.clear()
    return MixpanelCapture(server, pipeline)
