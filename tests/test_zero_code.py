"""Zero-code: a real ``opentelemetry-instrument`` subprocess, environment only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from otel_mixpanel.testing import LocalMixpanel

APP = """
import logging
from opentelemetry import trace
from otel_mixpanel import bind_identity

tracer = trace.get_tracer("app")
with bind_identity(user_id="zero-code-user"):
    with tracer.start_as_current_span("signup") as span:
        span.set_attribute("mixpanel.event", "Signed Up")
    logging.getLogger("app").warning("paid", extra={"mixpanel.event": "Paid"})
"""


def instrument(args: List[str], env: Dict[str, str], app: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "opentelemetry-instrument"
    return subprocess.run([str(binary), *args, sys.executable, str(app)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def base_env(mixpanel: LocalMixpanel) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(mixpanel.env())
    env.update(
        OTEL_METRICS_EXPORTER="none",
        OTEL_PYTHON_CONFIGURATOR="mixpanel",
        OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
    )
    return env


def test_environment_only(mixpanel: LocalMixpanel, app: Path) -> None:
    """Tagged spans and log records arrive, with the request identity, no code."""
    env = base_env(mixpanel)
    env.update(OTEL_TRACES_EXPORTER="mixpanel", OTEL_LOGS_EXPORTER="mixpanel")
    result = instrument([], env, app)
    assert result.returncode == 0, result.stderr
    assert mixpanel.wait_for(lambda m: len(m.events) == 2)
    identities = {e["event"]: e["properties"]["distinct_id"] for e in mixpanel.events}
    assert identities == {"Signed Up": "zero-code-user", "Paid": "zero-code-user"}


def test_beside_an_otlp_pipeline_with_flags(mixpanel: LocalMixpanel, app: Path) -> None:
    """--traces_exporter otlp,mixpanel: ours delivers even while the OTLP
    collector is unreachable; the token comes from our CLI flag."""
    env = base_env(mixpanel)
    token = env.pop("OTEL_EXPORTER_MIXPANEL_TOKEN")
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there
    env["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"
    env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"  # the exporter installed here
    result = instrument(
        ["--traces_exporter", "otlp,mixpanel", "--logs_exporter", "mixpanel",
         "--exporter_mixpanel_token", token],
        env, app,
    )
    assert result.returncode == 0, result.stderr
    assert mixpanel.wait_for(lambda m: len(m.events) == 2)
    assert {e["event"] for e in mixpanel.events} == {"Signed Up", "Paid"}


def test_burst_sized_counting_queue_in_zero_code(mixpanel: LocalMixpanel, tmp_path: Path) -> None:
    """Our exporter gets configure()'s burst-sized ordered buffer that counts
    queue-full drops; another exporter beside it keeps the SDK's default processor."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from opentelemetry import trace\n"
        "for p in trace.get_tracer_provider()._active_span_processor._span_processors:\n"
        "    inner = getattr(p, '_batch_processor', None)  # the SDK's layout from 1.34\n"
        "    queue = getattr(inner, '_queue', None) if inner else getattr(p, 'queue', None)\n"
        "    size = getattr(getattr(p, '_intake', None), '_max_queue_size', None)\n"
        "    print(type(p).__name__, size or getattr(queue, 'maxlen', None))\n"
    )
    env = base_env(mixpanel)
    env.update(OTEL_TRACES_EXPORTER="console,mixpanel", OTEL_LOGS_EXPORTER="mixpanel")
    result = instrument([], env, probe)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "OrderedSpanProcessor 20480" in lines
    assert "BatchSpanProcessor 2048" in lines


def test_structlog_without_the_logging_handler(mixpanel: LocalMixpanel, tmp_path: Path) -> None:
    """OTEL_LOGS_EXPORTER=mixpanel alone (no stdlib handler asked for) still gives
    a logger provider for structlog events: the SDK sets none up before 1.30."""
    app = tmp_path / "structlog_app.py"
    app.write_text(
        "import structlog\n"
        "from otel_mixpanel.structlog import MixpanelProcessor\n"
        "structlog.configure(\n"
        "    processors=[MixpanelProcessor(), structlog.processors.JSONRenderer()])\n"
        "structlog.get_logger().info('paid', mixpanel_event='Paid', mixpanel_user_id='u7',\n"
        "                            mixpanel_properties={'plan': 'pro'})\n"
    )
    env = base_env(mixpanel)
    del env["OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED"]
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_LOGS_EXPORTER="mixpanel")
    result = instrument([], env, app)
    assert result.returncode == 0, result.stderr
    assert mixpanel.wait_for(lambda m: len(m.events) == 1)
    (event,) = mixpanel.events
    assert (event["event"], event["properties"]["distinct_id"]) == ("Paid", "u7")
    assert event["properties"]["plan"] == "pro"


HELPER_APP = """
import time
from opentelemetry import trace
from otel_mixpanel._inputs import _intake

tracer = trace.get_tracer("app")

def burst(prefix):
    for i in range(600):
        with tracer.start_as_current_span("s") as span:
            span.set_attribute("mixpanel.event", f"{prefix}{i}")
            span.set_attribute("mixpanel.distinct_id", "u")

burst("Warm")
trace.get_tracer_provider().force_flush()
intake = next(i for i in list(_intake._ALL) if not i._shutdown)
end = time.monotonic() + 20
while intake.offload.state != "running" and time.monotonic() < end:
    time.sleep(0.02)
burst("Busy")
trace.get_tracer_provider().force_flush()
process = intake.offload._process
print("helper", intake.offload.state, intake.offload.batches, "-I" in process.args)
"""


def test_the_helper_process_is_not_instrumented_by_zero_code(
    mixpanel: LocalMixpanel, tmp_path: Path,
) -> None:
    """opentelemetry-instrument puts its sitecustomize on PYTHONPATH; the helper
    process starts isolated from it, so it translates and never sets up (and
    sends through) an SDK of its own."""
    path = tmp_path / "app.py"
    path.write_text(HELPER_APP)
    env = base_env(mixpanel)
    env.update(OTEL_TRACES_EXPORTER="mixpanel", OTEL_LOGS_EXPORTER="none")
    result = instrument([], env, path)
    assert result.returncode == 0, result.stderr
    state, batches, isolated = result.stdout.split()[1:4]
    assert state == "running" and int(batches) >= 1, result.stdout + result.stderr
    assert isolated == "True"
    assert mixpanel.wait_for(lambda m: len(m.events) == 1200)
    assert len(mixpanel.unique_events()) == 1200  # nothing twice, nothing from the helper
