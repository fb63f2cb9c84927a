"""The pytest plugin owns every Mixpanel destination during a test session:
run as a user would, with pytest on a small project of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

APP = '''
import otel_mixpanel
from opentelemetry import trace

# As many applications do: telemetry set up at import, with the real project.
pipeline = otel_mixpanel.configure({arguments})


def sign_up(user_id):
    with trace.get_tracer("shop").start_as_current_span("signup") as span:
        span.set_attribute("mixpanel.event", "Signed Up")
        span.set_attribute("mixpanel.user_id", user_id)
'''

TESTS = '''
import app


def test_signup_reaches_the_local_mixpanel(mixpanel_capture):
    app.sign_up("user-1")
    assert mixpanel_capture.event("Signed Up")["properties"]["distinct_id"] == "user-1"
    queue = app.pipeline.span_exporter._queue
    assert queue.settings.base_url == mixpanel_capture.server.url


def test_a_failed_expectation_says_what_arrived(mixpanel_capture):
    app.sign_up("user-2")
    mixpanel_capture.event("Purchased")
'''


def run_pytest(
    tmp_path: Path, arguments: str, conftest: str = ""
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP.format(arguments=arguments)))
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_app.py").write_text(textwrap.dedent(TESTS))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120, check=False,
    )


def test_a_real_token_configured_at_import_sends_nothing_out(tmp_path: Path) -> None:
    """configure(token=<real>) at import aims at api.mixpanel.com; under the
    plugin it reaches the local Mixpanel instead, and a failure lists arrivals."""
    result = run_pytest(tmp_path, 'token="a-real-project-token"')
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr
    assert "expected one 'Purchased' event, got 0; received: 'Signed Up' (distinct_id " \
        "'user-2')" in result.stdout


def test_an_app_imported_by_conftest_is_redirected_too(tmp_path: Path) -> None:
    """conftest.py files are imported before pytest_configure: the plugin owns
    the destinations before that."""
    result = run_pytest(tmp_path, 'token="a-real-project-token"', conftest="import app\n")
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr


def test_a_subprocess_of_a_test_gets_no_placeholder_token(tmp_path: Path) -> None:
    """The placeholder is for this process only: a subprocess a test starts
    must not be handed a token that would aim it at the real Mixpanel."""
    (tmp_path / "test_sub.py").write_text(textwrap.dedent('''
        import os, subprocess, sys

        def test_subprocess_environment():
            out = subprocess.run([sys.executable, "-c", "import os; print(sorted(k for k in "
                                  "os.environ if k.startswith('OTEL_EXPORTER_MIXPANEL')))"],
                                 capture_output=True, text=True, check=True).stdout
            assert out.strip() == "[]"
    '''))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sub.py"],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120, check=False,
    )
    assert "1 passed" in result.stdout, result.stdout + result.stderr


def test_an_app_that_needs_a_token_at_import_works_under_the_plugin(tmp_path: Path) -> None:
    """No token set anywhere: configure() at import would raise ConfigurationError
    at collection; the plugin gives it a placeholder."""
    result = run_pytest(tmp_path, "")
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr


def test_a_broken_install_never_breaks_an_unrelated_test_run(tmp_path: Path) -> None:
    """When otel-mixpanel cannot load (here: the SDK's logs module is missing,
    as on an unsupported opentelemetry-sdk), an unrelated suite still
    runs with --strict-config and our ini option set, the report header says
    why, and only a test asking for mixpanel_capture errors, with the reason."""
    breaker = tmp_path / "breaker"
    breaker.mkdir()
    # Python imports sitecustomize from sys.path at start-up, before pytest.
    (breaker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['opentelemetry.sdk._logs'] = None\n"
    )
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text(
        "[pytest]\naddopts = --strict-config\nmixpanel_real_destinations = false\n"
    )
    (project / "test_unrelated.py").write_text(textwrap.dedent('''
        def test_arithmetic():
            assert 1 + 1 == 2

        def test_capture(mixpanel_capture):
            pass
    '''))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ["PYTHONPATH"] = str(breaker)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rf", str(project)],
        cwd=project, env=environ, capture_output=True, text=True, timeout=120, check=False,
    )
    output = result.stdout + result.stderr
    assert "1 passed, 1 error" in output, output
    assert "Error while loading plugin" not in output
    why = "(ModuleNotFoundError: import of opentelemetry.sdk._logs halted"
    assert f"otel-mixpanel: pytest plugin off, the package could not load {why}" in output
    assert f"mixpanel_capture: otel-mixpanel could not load {why}" in output
