"""The pytest plugin's entry point (``pytest11``), outside the otel_mixpanel
package on purpose: importing any module of a package runs the package's
``__init__`` first, and a package that cannot load (an unsupported
opentelemetry-sdk, a broken install) must not stop every pytest run in the
environment at "Error while loading plugin". The plugin itself is
:mod:`otel_mixpanel.pytest_plugin`; when it cannot load, this module says why
once, in the report header, and stays out of the way.
"""


from __future__ import annotations

from typing import Any, List

import pytest

__all__: List[str] = []

try:
    from otel_mixpanel._pytest import (
        _otel_mixpanel_session,  # noqa: F401 - a hook or fixture pytest finds here
        mixpanel_capture,
        pytest_addoption,
        pytest_configure,  # noqa: F401 - a hook or fixture pytest finds here
        pytest_load_initial_conftests,  # noqa: F401 - a hook or fixture pytest finds here
        pytest_unconfigure,  # noqa: F401 - a hook or fixture pytest finds here
    )
except Exception as error:  # whatever it is, the test run goes on
    _WHY = f"{type(error).__name__}: {error}"

    def pytest_addoption(parser: pytest.Parser) -> None:
        # Registered anyway, so that an ini file setting it still parses.
        parser.addini("mixpanel_real_destinations", "otel-mixpanel (not loaded)",
                      type="bool", default=False)

    def pytest_report_header(config: pytest.Config) -> List[str]:
        return [f"otel-mixpanel: pytest plugin off, the package could not load ({_WHY})"]

    @pytest.fixture
    def mixpanel_capture() -> Any:
        """Fails the test that asks for it, with the reason."""
        pytest.fail(f"mixpanel_capture: otel-mixpanel could not load ({_WHY})", pytrace=False)
