"""The documentation site builds strictly, its code runs, and its reference
pages agree with the code."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from otel_mixpanel import environment_variables
from otel_mixpanel._inputs._exporter import MixpanelExporterBase
from otel_mixpanel.testing import LocalMixpanel

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"


def python_blocks() -> List[Tuple[str, int, str]]:
    """(page, index, code) of every ```python block; snippet includes are
    tests themselves and run as such."""
    blocks = []
    for page in sorted(DOCS.glob("*.md")):
        found = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
        for index, code in enumerate(found):
            if not code.startswith("--8<--"):
                blocks.append((page.name, index, code))
    return blocks


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """mkdocs build --strict: no broken link, no missing page, API pages render."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    api = (tmp_path / "api" / "index.html").read_text()
    assert "MixpanelSpanExporter" in api and "bind_identity" in api


@pytest.mark.parametrize(("page", "index", "code"), python_blocks(),
                         ids=[f"{page}-{index}" for page, index, _ in python_blocks()])
def test_code_block_runs(page: str, index: int, code: str) -> None:
    """Each Python block is a complete program; one that tags an event delivers it."""
    with LocalMixpanel() as mixpanel:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(mixpanel.env())
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, timeout=60, check=False, cwd=ROOT)
        assert result.returncode == 0, f"{page} block {index}:\n{result.stderr}"
        # A block that starts its own LocalMixpanel asserts on it itself.
        if re.search(r"mixpanel[._]event", code) and "LocalMixpanel(" not in code:
            assert mixpanel.wait_for(lambda m: len(m.events) > 0), f"{page} block {index}"
            assert mixpanel.rejected == []


def test_configuration_page_names_every_setting() -> None:
    """Every environment variable and exporter argument is on the configuration page."""
    text = (DOCS / "configuration.md").read_text()
    for variable in environment_variables.__all__:
        assert f"`{variable}`" in text, variable
    for parameter in inspect.signature(MixpanelExporterBase.__init__).parameters:
        if parameter != "self":
            assert f"| `{parameter}` |" in text, parameter
