"""Shared fixtures: a clean environment and a local Mixpanel per test."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from otel_mixpanel.testing import LocalMixpanel


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a developer's own Mixpanel or OTel settings."""
    for name in list(os.environ):
        if name.startswith(("OTEL_EXPORTER_MIXPANEL_", "OTEL_")):
            monkeypatch.delenv(name)


@pytest.fixture
def mixpanel() -> Iterator[LocalMixpanel]:
    """A Mixpanel-compatible server on 127.0.0.1, stopped after the test."""
    with LocalMixpanel() as server:
        yield server
