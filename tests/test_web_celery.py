"""Identity bound in a web request reaches the Celery tasks it enqueues.

The proof runs the real thing in this process: a Celery app on kombu's
in-memory broker, an embedded worker on its own thread (its own context,
started before anything is bound: nothing reaches a task but what its message
carries), and
opentelemetry-instrumentation-celery, whose publish hook injects the current
context with the global propagator (trace context and baggage by default) and
whose worker side extracts and attaches it. With ``propagate=True`` the ids
travel as W3C baggage and the task's span and ``track()`` record get them;
without it, the task has no identity; the client IP never travels.

The worker is started once for the module (stopping one takes seconds); each
test instruments Celery with its own providers and ``configure()`` pipeline.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, List, Optional, Set

import pytest
from celery import Celery, chain
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from flask import Flask
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import otel_mixpanel
from otel_mixpanel import MixpanelPipeline, bind_identity
from otel_mixpanel.identity import current_identity
from otel_mixpanel.testing import LocalMixpanel
from otel_mixpanel.web.flask import MixpanelFlask

SPAN_EVENT = "Receipt Sent"  # the task's span, tagged
TRACKED_EVENT = "Receipt Logged"  # the task's track() call, a log record
WAIT = 10.0  # seconds: an upper bound, never slept
CLIENT_IP = "203.0.113.9"


class Scene:
    """What the task reports to, and sends through, in the running test."""

    def __init__(self) -> None:
        self.logger_provider: Optional[LoggerProvider] = None
        self.seen: Dict[str, Dict[str, str]] = {}  # order -> current_identity() in the task
        self.finished: Set[str] = set()  # orders whose task_postrun signal has been handled
        self.changed = threading.Condition()

    def task_finished(self, *, args: Any, **kwargs: Any) -> None:
        """A task_postrun receiver, connected after the instrumentation's."""
        with self.changed:
            self.finished.add(args[0])
            self.changed.notify_all()

    def wait_idle(self) -> bool:
        """Wait until every task that ran has been through task_postrun, where
        the instrumentation ends its span and detaches the message's context."""
        with self.changed:
            return self.changed.wait_for(lambda: set(self.seen) <= self.finished, timeout=WAIT)


class Worker:
    """The Celery app, its task, and a real worker consuming the app's queue."""

    def __init__(self, app: Celery, send_receipt: Any, scene: Scene) -> None:
        self.app = app
        self.send_receipt = send_receipt  # a Celery task (celery has no type hints)
        self.scene = scene


# opentelemetry-instrumentation-celery 0.41b0 (the SDK 1.20 train) parents the
# task's span on the context the message carried but never attaches it, so its
# baggage is not in force in the task; 0.54b0 (the 1.33 train) does.
NEEDS_ATTACHED_CONTEXT = pytest.mark.needs_sdk(
    "1.33", "instrumentation-celery 0.41b0 does not attach the message's context")


@pytest.fixture(scope="module")
def celery_worker() -> Iterator[Worker]:
    """The app on the in-memory broker and its embedded worker, for the module."""
    app = Celery("test_web_celery", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    app.conf.update(
        broker_transport_options={"polling_interval": 0.01},
        broker_connection_retry_on_startup=False,
    )
    # start_worker() sets up Celery's logging, which outlives the worker: the
    # root logger's level and a handler, captured warnings, warning filters and
    # environment variables. The rest of the test run needs them as they are.
    app.log.setup = lambda *args, **kwargs: None
    scene = Scene()

    @app.task(name="tests.send_receipt")  # type: ignore[untyped-decorator]
    def send_receipt(order: str) -> str:
        scene.seen[order] = current_identity()
        span = trace.get_current_span()  # the instrumentation's run/tests.send_receipt
        span.set_attribute("mixpanel.event", SPAN_EVENT)
        span.set_attribute("mixpanel.properties.order", order)
        otel_mixpanel.track(TRACKED_EVENT, {"order": order},
                            logger_provider=scene.logger_provider)
        return order

    # start_worker raises if the worker's thread outlives shutdown_timeout.
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=WAIT):
        yield Worker(app, send_receipt, scene)
    app.close()


@pytest.fixture
def pipeline(mixpanel: LocalMixpanel) -> Iterator[MixpanelPipeline]:
    """configure() on providers of the test's own, exporting to the local Mixpanel."""
    made = otel_mixpanel.configure(
        token=mixpanel.token, api_host=mixpanel.url, tracer_provider=TracerProvider(),
        logger_provider=LoggerProvider(), schedule_delay_millis=50,
    )
    yield made
    assert made.shutdown(timeout_millis=5_000)


@contextlib.contextmanager
def instrumented(
    celery_worker: Worker, pipeline: MixpanelPipeline, **options: Any
) -> Iterator[CeleryInstrumentor]:
    """Celery instrumented on *pipeline*'s providers for the block; the task
    sends its track() record through the same pipeline."""
    scene = celery_worker.scene
    scene.logger_provider = pipeline.logger_provider
    scene.seen.clear()
    scene.finished.clear()
    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    instrumentor.instrument(tracer_provider=pipeline.tracer_provider, **options)
    task_postrun.connect(scene.task_finished)
    try:
        yield instrumentor
    finally:
        # Uninstrumenting while a task is still in task_postrun would leave
        # its span open and its context attached on the worker's thread.
        idle = scene.wait_idle()
        task_postrun.disconnect(scene.task_finished)
        instrumentor.uninstrument()
        scene.logger_provider = None
    assert idle, f"tasks still running: {set(scene.seen) - scene.finished}"


@pytest.fixture
def worker(celery_worker: Worker, pipeline: MixpanelPipeline) -> Iterator[Worker]:
    """The worker, with Celery instrumented on the test's pipeline."""
    # The claim rests on the default propagators (OTEL_PROPAGATORS unset, as
    # the autouse fixture leaves it): trace context and baggage.
    assert {"traceparent", "baggage"} <= propagate.get_global_textmap().fields
    with instrumented(celery_worker, pipeline):
        yield celery_worker


def run(worker: Worker, order: str) -> None:
    """Enqueue the task for *order* from the current context and wait for its result."""
    assert worker.send_receipt.delay(order).get(timeout=WAIT) == order


def task_events(mixpanel: LocalMixpanel, orders: List[str]) -> Dict[str, Dict[str, Any]]:
    """The properties of both events of each order's task, by "<event>/<order>"."""
    wanted = {f"{name}/{order}" for name in (SPAN_EVENT, TRACKED_EVENT) for order in orders}

    def received() -> Dict[str, Dict[str, Any]]:
        return {f"{e['event']}/{e['properties'].get('order')}": e["properties"]
                for e in mixpanel.events if e["event"] in (SPAN_EVENT, TRACKED_EVENT)}

    assert mixpanel.wait_for(lambda m: wanted <= set(received()), timeout=WAIT), received()
    assert mixpanel.rejected == []
    return received()


def assert_user(properties: Dict[str, Any], user: str) -> None:
    assert properties["distinct_id"] == user
    assert properties["$user_id"] == user


@NEEDS_ATTACHED_CONTEXT
def test_identity_bound_with_propagate_reaches_the_task(
    worker: Worker, mixpanel: LocalMixpanel
) -> None:
    with bind_identity(user_id="u-celery", propagate=True):  # what a request does
        run(worker, "o-1")
    assert worker.scene.seen["o-1"] == {"mixpanel.user_id": "u-celery"}  # from baggage
    events = task_events(mixpanel, ["o-1"])
    assert_user(events[f"{SPAN_EVENT}/o-1"], "u-celery")
    assert_user(events[f"{TRACKED_EVENT}/o-1"], "u-celery")


def test_without_propagate_the_task_has_no_identity(
    worker: Worker, mixpanel: LocalMixpanel
) -> None:
    with bind_identity(user_id="u-local", device_id="d-local"):  # propagate=False
        run(worker, "o-2")
    run(worker, "o-3")  # enqueued outside any request
    assert worker.scene.seen == {"o-2": {}, "o-3": {}}
    events = task_events(mixpanel, ["o-2", "o-3"])
    for properties in events.values():
        assert properties["distinct_id"] == ""  # anonymous
        assert "$user_id" not in properties
        assert "$device_id" not in properties


@NEEDS_ATTACHED_CONTEXT
def test_two_bindings_keep_their_own_users(worker: Worker, mixpanel: LocalMixpanel) -> None:
    """Each message carries the binding it was sent under, device id included,
    and the worker's thread keeps nothing of one task for the next."""
    with bind_identity(user_id="u-a", device_id="d-a", propagate=True):
        first = worker.send_receipt.delay("o-a")
        with bind_identity(user_id="u-b", propagate=True):  # nested: overrides the user
            second = worker.send_receipt.delay("o-b")
    after = worker.send_receipt.delay("o-none")  # the same worker thread runs all three
    assert [r.get(timeout=WAIT) for r in (first, second, after)] == ["o-a", "o-b", "o-none"]
    assert worker.scene.seen == {
        "o-a": {"mixpanel.user_id": "u-a", "mixpanel.device_id": "d-a"},
        "o-b": {"mixpanel.user_id": "u-b", "mixpanel.device_id": "d-a"},
        "o-none": {},
    }
    events = task_events(mixpanel, ["o-a", "o-b"])
    for name in (SPAN_EVENT, TRACKED_EVENT):
        assert_user(events[f"{name}/o-a"], "u-a")
        assert_user(events[f"{name}/o-b"], "u-b")
        assert events[f"{name}/o-a"]["$device_id"] == "d-a"
        assert events[f"{name}/o-b"]["$device_id"] == "d-a"


@NEEDS_ATTACHED_CONTEXT
def test_a_flask_request_enqueues_a_task_for_its_user_but_not_its_ip(
    worker: Worker, mixpanel: LocalMixpanel, pipeline: MixpanelPipeline
) -> None:
    """The Flask middleware binds with propagate=True by default: the task sees
    the user; the client IP, bound for the request's own events, stays behind."""
    app = Flask(__name__)
    MixpanelFlask(app, identify=lambda request: request.headers.get("X-User-Id"),
                  trusted_proxies=["127.0.0.1"], cookie=False)

    @app.post("/orders/<order>")
    def checkout(order: str) -> str:
        otel_mixpanel.track("Checked Out", {"order": order},
                            logger_provider=pipeline.logger_provider)
        return str(worker.send_receipt.delay(order).id)

    response = app.test_client().post(
        "/orders/o-web", headers={"X-User-Id": "u-web", "X-Forwarded-For": CLIENT_IP})
    assert response.status_code == 200
    assert worker.app.AsyncResult(response.get_data(as_text=True)).get(timeout=WAIT) == "o-web"
    assert worker.scene.seen["o-web"] == {"mixpanel.user_id": "u-web"}
    events = task_events(mixpanel, ["o-web"])
    assert mixpanel.wait_for(lambda m: len(m.events_named("Checked Out")) == 1, timeout=WAIT)
    request_event = mixpanel.events_named("Checked Out")[0]["properties"]
    assert_user(request_event, "u-web")
    assert request_event["ip"] == CLIENT_IP  # the request's own event is geolocated
    for name in (SPAN_EVENT, TRACKED_EVENT):
        assert_user(events[f"{name}/o-web"], "u-web")
        assert "ip" not in events[f"{name}/o-web"]  # the IP never travels


@NEEDS_ATTACHED_CONTEXT
def test_tasks_a_task_enqueues_inherit_the_identity(
    worker: Worker, mixpanel: LocalMixpanel
) -> None:
    """A chain's next task is sent by the worker, inside the first task's
    extracted context: the baggage goes on."""
    with bind_identity(user_id="u-chain", propagate=True):
        result = chain(worker.send_receipt.si("o-c1"), worker.send_receipt.si("o-c2")).delay()
    assert result.get(timeout=WAIT) == "o-c2"
    events = task_events(mixpanel, ["o-c1", "o-c2"])
    for properties in events.values():
        assert_user(properties, "u-chain")


def test_a_propagator_without_baggage_carries_no_identity(
    worker: Worker, mixpanel: LocalMixpanel
) -> None:
    """OTEL_PROPAGATORS=tracecontext (no baggage): the ids stay in the request."""
    default = propagate.get_global_textmap()
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    try:
        with bind_identity(user_id="u-lost", propagate=True):
            run(worker, "o-tc")
    finally:
        propagate.set_global_textmap(default)
    assert worker.scene.seen["o-tc"] == {}
    for properties in task_events(mixpanel, ["o-tc"]).values():
        assert properties["distinct_id"] == ""


def test_span_links_mode_drops_the_identity(
    celery_worker: Worker, pipeline: MixpanelPipeline, mixpanel: LocalMixpanel
) -> None:
    """instrument(use_span_links=True) extracts the context only to link to it,
    never attaches it: the baggage, and with it the identity, is not applied."""
    with instrumented(celery_worker, pipeline, use_span_links=True) as instrumentor:
        if getattr(instrumentor, "_use_span_links", None) is not True:
            pytest.skip("this opentelemetry-instrumentation-celery has no use_span_links")
        with bind_identity(user_id="u-linked", propagate=True):
            run(celery_worker, "o-link")
    assert celery_worker.scene.seen["o-link"] == {}
    for properties in task_events(mixpanel, ["o-link"]).values():
        assert properties["distinct_id"] == ""
