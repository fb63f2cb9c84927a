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

During a test session no exporter reaches a real Mixpanel project: every
destination that is not on this machine is replaced by the session's local
Mixpanel, even for an application that called ``configure()`` with a real
token at import (in a conftest.py too), and an application that needs a token
at import gets a placeholder when none is set (in this process only). Set the ini option
``mixpanel_real_destinations = true`` to turn this off.
"""

from __future__ import annotations

from otel_mixpanel._pytest import MixpanelCapture, mixpanel_capture

__all__ = ["MixpanelCapture", "mixpanel_capture"]
