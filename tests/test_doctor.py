"""``otel-mixpanel doctor``: each set-up trap in a test application is flagged
with its fix, and a correct application passes. Each run is a fresh process,
as the application's own start would be."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict

from otel_mixpanel.testing import LocalMixpanel

GOOD = """
import logging
import structlog
import otel_mixpanel

logging.getLogger().setLevel(logging.INFO)
structlog.configure(processors=[structlog.processors.JSONRenderer()])
pipeline = otel_mixpanel.configure(logging=True, structlog=True)
"""

TRAPS = """
import structlog
import otel_mixpanel

# configure(logging=True) with the root logger at WARNING, structlog without
# our processor, and (in the fake site-packages) a framework with no instrumentation.
pipeline = otel_mixpanel.configure(logging=True)
structlog.configure = structlog._config.configure  # an app that kept the original function
structlog.configure(processors=[structlog.processors.JSONRenderer()])
"""


def doctor(tmp_path: Path, app: str, environ: Dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(textwrap.dedent(app))
    return subprocess.run(
        [sys.executable, "-m", "otel_mixpanel.cli", "doctor", "--app", "app"],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60, check=False,
    )


def environment(mixpanel: LocalMixpanel, **extra: str) -> Dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**environ, **mixpanel.env(), **extra}


def test_a_correct_application_passes(mixpanel: LocalMixpanel, tmp_path: Path) -> None:
    result = doctor(tmp_path, GOOD, environment(mixpanel))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problem found" in result.stdout
    assert "tagged spans reach Mixpanel" in result.stdout
    assert "structlog events reach Mixpanel" in result.stdout


def test_each_trap_is_flagged_with_its_fix(mixpanel: LocalMixpanel, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "falcon").mkdir(parents=True)
    (site / "falcon" / "__init__.py").write_text("")  # a framework, installed bare
    result = doctor(tmp_path, TRAPS, environment(mixpanel, PYTHONPATH=str(site)))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "root logger's level is WARNING" in out and "setLevel(logging.INFO)" in out
    assert "structlog is configured without otel_mixpanel's processor" in out
    assert "falcon is installed without opentelemetry-instrumentation-falcon" in out
    assert "opentelemetry-bootstrap" in out
    assert "3 problem(s) that lose events" in out


def test_nothing_wired_and_no_credentials(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = doctor(tmp_path, "import logging\n", environ)
    assert result.returncode == 1
    assert "no Mixpanel credentials" in result.stdout
    assert "no Mixpanel exporter on the global tracer provider" in result.stdout


HAND_BUILT = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otel_mixpanel import MixpanelSpanExporter

provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(MixpanelSpanExporter()))
trace.set_tracer_provider(provider)
"""


def test_a_hand_built_batch_processor_counts(mixpanel: LocalMixpanel, tmp_path: Path) -> None:
    """The SDK's own BatchSpanProcessor around our exporter counts, whatever the
    SDK release keeps the exporter in."""
    result = doctor(tmp_path, HAND_BUILT, environment(mixpanel))
    assert "tagged spans reach Mixpanel" in result.stdout, result.stdout + result.stderr
