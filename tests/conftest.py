"""Shared fixtures: a clean environment and a local Mixpanel per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator, List, Protocol, Tuple, TypeVar

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from otel_mixpanel import MixpanelIdentityLogProcessor, MixpanelLogExporter, _compat, _config
from otel_mixpanel._inputs._exporter import MixpanelExporterBase
from otel_mixpanel.testing import LocalMixpanel

NEEDS_SDK = "needs_sdk"


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """A test marked ``needs_sdk("1.40", why)`` is skipped, with its reason, on
    an older SDK; the terminal summary counts them."""
    for item in items:
        marker = item.get_closest_marker(NEEDS_SDK)
        if marker is None:
            continue
        version, why = marker.args
        if _compat.sdk_release() < _compat.sdk_release(version):
            item.add_marker(pytest.mark.skip(
                reason=f"{NEEDS_SDK}: opentelemetry-sdk {version}+ ({why}); "
                       f"this is {_compat.SDK_VERSION}"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    by_marker = [r for r in skipped if NEEDS_SDK in str(getattr(r, "longrepr", ""))]
    terminalreporter.write_line(
        f"opentelemetry-sdk {_compat.SDK_VERSION}: {len(by_marker)} tests need a newer SDK "
        f"(marked {NEEDS_SDK}), {len(skipped) - len(by_marker)} other skips"
    )


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a developer's own Mixpanel or OTel settings, nor the pytest
    plugin's placeholder token (tests of missing credentials need none)."""
    monkeypatch.setattr(_config, "fallback_token", None)
    for name in list(os.environ):
        if name.startswith(("OTEL_EXPORTER_MIXPANEL_", "OTEL_")):
            monkeypatch.delenv(name)


SENDER = "otel-mixpanel-sender"


@pytest.fixture(autouse=True)
def no_sender_outlives_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every exporter a test makes is shut down: no sending-queue thread the test
    started is left retrying after it (an idle one would linger for 5 s). The
    pytest plugin's session pipeline is meant to outlive its tests."""
    before = set(threading.enumerate())
    yield
    if "mixpanel_capture" in request.fixturenames:
        return
    started = [t for t in threading.enumerate() if t.name == SENDER and t not in before]
    for thread in started:
        thread.join(timeout=3.0)
    assert [t for t in started if t.is_alive()] == [], "a sending queue was left open"


@pytest.fixture
def mixpanel() -> Iterator[LocalMixpanel]:
    """A Mixpanel-compatible server on 127.0.0.1, stopped after the test."""
    with LocalMixpanel() as server:
        yield server


@pytest.fixture
def log_pipeline(
    mixpanel: LocalMixpanel,
) -> Iterator[Tuple[LoggerProvider, MixpanelLogExporter]]:
    """A LoggerProvider with the identity processor and a batch processor
    exporting to the local Mixpanel; shut down after the test."""
    provider = LoggerProvider(resource=Resource.create({"service.name": "shop"}))
    exporter = MixpanelLogExporter(token=mixpanel.token, api_host=mixpanel.url)
    provider.add_log_record_processor(MixpanelIdentityLogProcessor())
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def mixpanel_env(mixpanel: LocalMixpanel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point no-argument exporters at the local Mixpanel through the environment."""
    for name, value in mixpanel.env().items():
        monkeypatch.setenv(name, value)


Exporter = TypeVar("Exporter", bound=MixpanelExporterBase)


class ShutDown(Protocol):
    """The ``shut_down`` fixture: returns its exporter, shut down after the test."""

    def __call__(self, exporter: Exporter) -> Exporter: ...


@pytest.fixture
def shut_down() -> Iterator[ShutDown]:
    """Pass an exporter through this to have it shut down after the test."""
    made: List[MixpanelExporterBase] = []

    def track(exporter: Exporter) -> Exporter:
        made.append(exporter)
        return exporter

    yield track
    for exporter in made:
        if not exporter._is_shut_down:
            exporter.shutdown(timeout_millis=1_000)


NODE_PROJECT = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def node() -> str:
    """Node and the OTLP exporters of tests/node, installed from its lock file when missing."""
    binary = shutil.which("node")
    npm = shutil.which("npm")
    assert binary and npm, "Node.js and npm are needed: apt-get install nodejs npm"
    if not (NODE_PROJECT / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_PROJECT,
                       check=True, timeout=300)
    return binary
