"""The public surface is pinned: a stray import or a forgotten export fails here."""

from __future__ import annotations

import types

import otel_mixpanel
import otel_mixpanel.testing


def public_names(module: object) -> list[str]:
    return sorted(
        (name for name in vars(module) if not name.startswith("_")), key=str.casefold
    )


def test_package_exports() -> None:
    """otel_mixpanel.__all__ lists exactly its public names (modules aside)."""
    names = [
        name for name in public_names(otel_mixpanel)
        if not isinstance(getattr(otel_mixpanel, name), types.ModuleType)
        and name != "annotations"
    ]
    assert sorted(otel_mixpanel.__all__, key=str.casefold) == sorted(
        [*names, "__version__"], key=str.casefold
    )


def test_testing_exports() -> None:
    """otel_mixpanel.testing exports the server and its record types."""
    assert set(otel_mixpanel.testing.__all__) >= {"LocalMixpanel", "ReceivedRequest", "Rejection"}
    for name in otel_mixpanel.testing.__all__:
        assert hasattr(otel_mixpanel.testing, name)


def test_version() -> None:
    """The version is a dotted string."""
    assert otel_mixpanel.__version__.count(".") == 2
