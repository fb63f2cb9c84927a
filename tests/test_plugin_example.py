from opentelemetry import trace

from otel_mixpanel.pytest_plugin import MixpanelCapture


def sign_up(user_id: str, plan: str) -> None:
    """The code under test: it tags the span it already has."""
    with trace.get_tracer("shop").start_as_current_span("signup") as span:
        span.set_attribute("mixpanel.event", "Signed Up")
        span.set_attribute("mixpanel.user_id", user_id)
        span.set_attribute("mixpanel.people.set.plan", plan)


def test_signup_is_tracked(mixpanel_capture: MixpanelCapture) -> None:
    """The example of docs/testing.md: three lines of test."""
    sign_up("user-1", plan="pro")
    assert mixpanel_capture.event("Signed Up")["properties"]["distinct_id"] == "user-1"
    assert mixpanel_capture.profile("user-1") == {"plan": "pro"}
