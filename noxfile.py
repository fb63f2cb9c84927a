"""Supported-version matrix: the oldest and the newest releases we allow.

    .venv/bin/nox -s compat

Each session installs the package with pinned opentelemetry-sdk/-api and
structlog into a fresh virtualenv and runs the tests that need nothing beyond
the runtime dependencies (the instrumentation packages pin their own SDK
versions, so those tests run in the main environment only).
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False

MATRIX = {
    "oldest": ["opentelemetry-sdk==1.39.0", "opentelemetry-api==1.39.0", "structlog==23.1.0"],
    "newest": ["opentelemetry-sdk", "opentelemetry-api", "structlog"],
}
TESTS = [
    "tests/testing", "tests/test_config.py", "tests/test_convention.py",
    "tests/test_translate.py", "tests/test_limits.py", "tests/test_batch.py",
    "tests/test_delivery.py", "tests/test_retry.py", "tests/test_trace.py",
    "tests/test_identity.py", "tests/test_lifecycle.py", "tests/test_spool.py",
    "tests/test_spool_replay.py", "tests/test_structlog.py", "tests/test_reliability.py",
]


@nox.session
@nox.parametrize("versions", list(MATRIX))
def compat(session: nox.Session, versions: str) -> None:
    """Run the core tests against one end of the supported range."""
    session.install("--upgrade", "-q", *MATRIX[versions])
    session.install("-q", "-e", ".", "pytest", "pytest-timeout", "hypothesis", "jsonschema",
                    "pyyaml", "requests", *MATRIX[versions])
    session.run("python", "-c", "import opentelemetry.sdk.version as v, importlib.metadata as m;"
                " print('opentelemetry-sdk', v.__version__, 'structlog', m.version('structlog'))")
    session.run("pytest", "-p", "no:cacheprovider", *TESTS)
