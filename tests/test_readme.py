"""The README's three set-up blocks, run as written against the local Mixpanel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from otel_mixpanel.testing import LocalMixpanel

README = (Path(__file__).parents[1] / "README.md").read_text()
APP = """
from opentelemetry import trace
with trace.get_tracer("app").start_as_current_span("signup") as span:
    span.set_attribute("mixpanel.event", "Signed Up")
    span.set_attribute("mixpanel.user_id", "user-42")
"""


def block(name: str) -> str:
    """The code block right after ``<!-- setup:name -->``."""
    match = re.search(rf"<!-- setup:{name} -->\n```\w+\n(.*?)```", README, re.DOTALL)
    assert match, f"README has no setup:{name} block"
    return match.group(1)


def environment(mixpanel: LocalMixpanel) -> Dict[str, str]:
    """A clean environment pointing at the local Mixpanel instead of the real one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_MIXPANEL_API_HOST"] = mixpanel.url
    env["OTEL_EXPORTER_MIXPANEL_TOKEN"] = mixpanel.token
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_zero_code_block(mixpanel: LocalMixpanel, tmp_path: Path) -> None:
    """The shell block works as written (its pip and bootstrap lines aside: what they
    install is installed already), with the placeholder token replaced."""
    commands = block("zero-code").replace("your-project-token", mixpanel.token)
    script = "\n".join(line for line in commands.splitlines()
                       if not line.startswith(("pip ", "opentelemetry-bootstrap ")))
    (tmp_path / "app.py").write_text(APP)
    result = subprocess.run(["bash", "-euc", script], cwd=tmp_path, env=environment(mixpanel),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert mixpanel.wait_for(lambda m: len(m.events_named("Signed Up")) == 1)


@pytest.mark.parametrize(("name", "event"), [("sdk", "Signed Up"), ("configure", "Paid")])
def test_python_blocks(mixpanel: LocalMixpanel, name: str, event: str) -> None:
    """Each Python block, run as a program, delivers its event."""
    result = subprocess.run([sys.executable, "-c", block(name)], env=environment(mixpanel),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert mixpanel.wait_for(lambda m: len(m.events_named(event)) == 1)
    assert mixpanel.events_named(event)[0]["properties"]["distinct_id"] == "user-42"
