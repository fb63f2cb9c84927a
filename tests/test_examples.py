"""Every example runs as a user would run it, against the local Mixpanel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )


def test_quickstart_prints_what_mixpanel_received() -> None:
    """With no token the quickstart starts a local Mixpanel and prints the received table."""
    result = run_example("quickstart.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("Signed Up") and "user-42" in line for line in lines)
    assert any(line.startswith("Purchased") and '"sku": "sku-1"' in line for line in lines)
    assert any(line.startswith("$add") and '"purchases": 1' in line for line in lines)
    assert any("$transactions" in line and "29.0" in line for line in lines)
    assert any(line.startswith("group $set") and "company=acme" in line for line in lines)


def test_every_example_is_tested() -> None:
    """No example file lacks a test in this module."""
    source = Path(__file__).read_text()
    for example in sorted((ROOT / "examples").glob("*.py")):
        if example.name == "__init__.py":
            continue
        assert f'"{example.name}"' in source, f"{example.name} is not run by a test"


def test_structlog_app() -> None:
    """The structlog example renders its lines without mixpanel keys and delivers both events."""
    result = run_example("structlog_app.py")
    assert result.returncode == 0, result.stderr
    assert "received 'Signed Up' for user-7" in result.stdout
    assert "received 'Order Paid' for user-7" in result.stdout
    assert "'plan': 'pro'" in result.stdout
    rendered = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rendered) == 3 and not any("mixpanel" in line for line in rendered)


def test_logging_app() -> None:
    """The stdlib logging example delivers the tagged line with the bound user."""
    result = run_example("logging_app.py")
    assert result.returncode == 0, result.stderr
    assert "received 'Checkout Completed' for user-9" in result.stdout
    assert "profile user-9: {'orders': 1}" in result.stdout
    assert "received 'cart viewed'" not in result.stdout


@pytest.mark.parametrize("name", ["flask_app.py", "fastapi_app.py", "django_app.py"])
def test_framework_example_runs(name: str) -> None:
    """Each framework example plays two users and prints both identities' events."""
    result = run_example(name)
    assert result.returncode == 0, result.stderr
    profiles = {line.split(":", 1)[0]: line for line in result.stdout.splitlines()
                if line.startswith("profile ")}
    for user, plan in (("alice", "pro"), ("bob", "free")):
        assert f"Signed Up              {user}" in result.stdout
        assert f"Purchased              {user}" in result.stdout
        # The key order depends on which request's span ends first (the SDK release).
        assert f"'plan': '{plan}'" in profiles[f"profile {user}"]


def test_worker_example() -> None:
    """Forked workers send their own events once; the parent's queued event is
    not sent twice; each short-lived worker flushes before exiting."""
    result = run_example("worker.py")
    assert result.returncode == 0, result.stderr
    assert "Parent Started received 1 time(s)" in result.stdout
    assert "Job Done received 6 time(s)" in result.stdout
    assert "profile worker-0: {'jobs': 3}" in result.stdout
    assert "profile worker-1: {'jobs': 3}" in result.stdout
