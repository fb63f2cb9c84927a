"""The ``otel-mixpanel`` command, run as a person runs it: the installed console script."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from otel_mixpanel._config import resolve_settings
from otel_mixpanel.cli._check import Probe, explain
from otel_mixpanel.cli._common import CliError
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import fill_spool

CLI = shutil.which("otel-mixpanel") or str(Path(sys.executable).parent / "otel-mixpanel")


def clean_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The test process's environment without any OTel setting, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra or {})
    return env


def cli(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """Run the console script to completion (bounded)."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=60, env=clean_env(env), check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """Exit *code*, one line on stderr (beside a progress bar), no traceback; returns it."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [
        line for line in result.stderr.strip().splitlines()
        if not line.lstrip("\r").startswith("[")
    ]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("otel-mixpanel")
    return lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Running:
    """A command started in the background, its stdout lines read on a thread."""

    def __init__(self, *args: str, env: Optional[Dict[str, str]] = None) -> None:
        self.process = subprocess.Popen(
            [CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=clean_env(env),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None
        stdout = self.process.stdout

        def read() -> None:
            for line in stdout:
                self.lines.put(line)

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def read_until(self, marker: str, timeout: float = 20) -> List[str]:
        """The stdout lines up to the one containing *marker*."""
        seen: List[str] = []
        deadline = time.monotonic() + timeout
        while not seen or marker not in seen[-1]:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and self.process.poll() is None, (seen, self.stop())
            try:
                seen.append(self.lines.get(timeout=min(remaining, 0.5)))
            except queue.Empty:
                continue
        return seen

    def stop(self, sig: int = signal.SIGINT) -> subprocess.CompletedProcess[str]:
        """Send *sig*, wait (bounded; killed if stuck), and return what it printed since."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=5)  # stdout is at its end once the process exited
        assert self.process.stderr is not None and self.process.stdout is not None
        stderr = self.process.stderr.read()
        self.process.stderr.close()
        self.process.stdout.close()
        rest: List[str] = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return subprocess.CompletedProcess(self.process.args, self.process.returncode,
                                           "".join(rest), stderr)


@pytest.fixture
def local_command() -> Iterator[Running]:
    """``otel-mixpanel local`` on a free port; stopped (killed if needed) after the test."""
    running = Running("local", "--port", str(free_port()))
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.stop()


# --help


@pytest.mark.parametrize(
    "command", [[], ["local"], ["check"], ["spool"], ["spool", "status"], ["spool", "replay"]]
)
def test_every_command_has_help(command: List[str]) -> None:
    """--help works everywhere and names the command."""
    result = cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {' '.join(['otel-mixpanel', *command])}")


# check


def test_check_succeeds_and_stores_nothing(mixpanel: LocalMixpanel) -> None:
    """Right token: exit 0, one "ok" line, and the local Mixpanel stored no event."""
    result = cli("check", "--token", mixpanel.token, "--api-host", mixpanel.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ") and "nothing was stored" in result.stdout
    assert mixpanel.events == [] and len(mixpanel.requests) == 1


def test_check_reads_the_environment_and_service_accounts(mixpanel: LocalMixpanel) -> None:
    """The OTEL_EXPORTER_MIXPANEL_* variables work like the flags, service account included."""
    result = cli("check", env=mixpanel.env(service_account=True))
    assert result.returncode == 0, result.stderr
    assert "service account 'local-sa' with project 1" in result.stdout
    assert mixpanel.requests[0].query["project_id"] == "1"


def test_check_wrong_token(mixpanel: LocalMixpanel) -> None:
    """A wrong token is named as such."""
    line = assert_one_line_error(cli("check", "--token", "nope", "--api-host", mixpanel.url))
    assert "refused the project token (401" in line


def test_check_wrong_project_id(mixpanel: LocalMixpanel) -> None:
    """A service account without access to the project id says so."""
    env = {**mixpanel.env(service_account=True), "OTEL_EXPORTER_MIXPANEL_PROJECT_ID": "2"}
    line = assert_one_line_error(cli("check", env=env))
    assert "refused the service account 'local-sa' with project 2" in line


def test_check_missing_project_id(mixpanel: LocalMixpanel) -> None:
    """A service account without a project id: its own message, no request sent."""
    username, secret = mixpanel.service_account
    line = assert_one_line_error(cli(
        "check", "--service-account-username", username, "--service-account-secret", secret,
        "--api-host", mixpanel.url,
    ))
    assert "needs the project id" in line and "--project-id" in line
    assert mixpanel.requests == []


def test_check_unreachable_host() -> None:
    """Nothing listening: the host is named as unreachable."""
    port = free_port()
    line = assert_one_line_error(cli("check", "--token", "t", "--api-host",
                                     f"http://127.0.0.1:{port}"))
    assert f"cannot reach Mixpanel at 127.0.0.1:{port}" in line


def test_check_hints_at_the_region_for_the_us_host() -> None:
    """A 401 from the US host suggests the region (no network: the answer is given)."""
    settings = resolve_settings(token="t")
    probe = Probe("https://api.mixpanel.com/import?strict=1", 401,
                  {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"})
    with pytest.raises(CliError, match="--region eu or in"):
        explain(settings, probe)
    eu = resolve_settings(token="t", region="eu")
    with pytest.raises(CliError, match=r"data residency matches api-eu\.mixpanel\.com"):
        explain(eu, probe)


def test_check_names_a_missing_project_id_answer() -> None:
    """Mixpanel's own 400 for a service account without project_id gets its own message."""
    settings = resolve_settings(service_account_username="a", service_account_secret="b",
                                project_id="1")
    probe = Probe("u", 400, {"code": 400, "error": "project_id is required when "
                             "authenticating with a service account", "status": "Bad Request"})
    with pytest.raises(CliError, match="needs the project id"):
        explain(settings, probe)


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["check", "--token", "t", "--region", "mars"], 1, "--region"),
        (["check", "--token", "t", "--api-host", "http://example.com"], 1, "plain http"),
        (["check"], 1, "no Mixpanel credentials"),
        (["check", "--timeout", "soon"], 2, "--timeout"),
        (["spool", "status", "/nonexistent/spool"], 1, "no such spool directory"),
        (["spool", "replay", "/nonexistent/spool", "--token", "t"], 1, "no such spool"),
        (["local", "--port", "http"], 2, "--port"),
        (["local", "--host", "0.0.0.0"], 2, "loopback"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "required"),
    ],
)
def test_bad_input_is_one_line(args: List[str], code: int, expected: str) -> None:
    """Bad input: one line on stderr, exit 1 (2 for usage), never a traceback."""
    assert expected in assert_one_line_error(cli(*args), code)


# spool


def test_spool_status(tmp_path: Path, mixpanel: LocalMixpanel) -> None:
    """Records, bytes, segments, the oldest as a time, and per endpoint."""
    fill_spool(tmp_path, mixpanel, 10, batch=5)
    result = cli("spool", "status", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "records   20" in out and "segments  " in out and "bytes     " in out
    assert "oldest    " + time.strftime("%Y-%m-%d") in out or "oldest    " in out
    assert "ago)" in out
    assert "/import   10 records" in out and "/engage   10 records" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("spool", "status", str(empty)).stdout.strip().endswith(": empty")


def test_spool_replay_sends_once_with_progress(tmp_path: Path, mixpanel: LocalMixpanel) -> None:
    """Replay to a healthy Mixpanel: progress bar on stderr, exit 0, rerun sends nothing."""
    fill_spool(tmp_path, mixpanel, 10, batch=5)
    with LocalMixpanel(token=mixpanel.token) as healthy:
        result = cli("spool", "replay", str(tmp_path), env=healthy.env())
        assert result.returncode == 0, result.stderr
        assert "20/20 records" in result.stderr and "[####" in result.stderr
        assert "sent 20 records" in result.stdout
        assert len(healthy.events) == 10 and healthy.profiles["u"] == {
            f"n{i}": 1 for i in range(10)
        }
        again = cli("spool", "replay", str(tmp_path), env=healthy.env())
        assert again.returncode == 0 and "sent 0 records" in again.stdout
        assert len(healthy.events) == 10 and len(healthy.profile_updates) == 10


def test_spool_replay_says_why_records_remain(tmp_path: Path, mixpanel: LocalMixpanel) -> None:
    """Mixpanel still down, or credentials refused: exit 1, how many remain, and why."""
    fill_spool(tmp_path, mixpanel, 5, batch=5)  # leaves the 503s scripted: Mixpanel is still down
    down = assert_one_line_error(cli("spool", "replay", str(tmp_path), "--timeout", "0.5",
                                     env=mixpanel.env()))
    assert "10 records remain" in down and "503 (Service Unavailable)" in down
    with LocalMixpanel() as healthy:
        refused = assert_one_line_error(cli("spool", "replay", str(tmp_path), "--token", "wrong",
                                            "--api-host", healthy.url))
    assert "10 records remain" in refused and "refused the credentials (401)" in refused


def test_spool_replay_interrupted_then_rerun(tmp_path: Path, mixpanel: LocalMixpanel) -> None:
    """Ctrl-C mid-replay exits 1 saying so; a rerun sends the rest: none twice, none lost."""
    fill_spool(tmp_path, mixpanel, 20, batch=5)
    with LocalMixpanel(token=mixpanel.token) as healthy:
        healthy.latency = 0.3  # slow enough to interrupt between batches
        running = Running("spool", "replay", str(tmp_path), env=healthy.env())
        assert healthy.wait_for(lambda m: len(m.requests) >= 1, timeout=20)
        stopped = running.stop(signal.SIGINT)
        assert stopped.returncode == 1, stopped.stderr
        assert "Traceback" not in stopped.stderr
        assert "interrupted; run the same command again" in stopped.stderr
        sent_before = len(healthy.requests)
        assert 0 < sent_before < 8  # 4 + 4 segments of 5 records
        healthy.latency = 0
        again = cli("spool", "replay", str(tmp_path), env=healthy.env())
        assert again.returncode == 0, again.stderr
        assert len(healthy.events) == 20 and len(healthy.unique_events()) == 20
        assert len(healthy.profile_updates) == 20
        assert healthy.profiles["u"] == {f"n{i}": 1 for i in range(20)}


# local


def test_local_prints_env_and_stops_on_sigint(local_command: Running) -> None:
    """The printed lines point an application at it; Ctrl-C exits 0 and frees the port."""
    lines = local_command.read_until("# live view:")
    exports = dict(
        line.removeprefix("export ").strip().split("=", 1)
        for line in lines if line.startswith("export ")
    )
    assert set(exports) == {"OTEL_EXPORTER_MIXPANEL_TOKEN", "OTEL_EXPORTER_MIXPANEL_API_HOST"}
    api_host = exports["OTEL_EXPORTER_MIXPANEL_API_HOST"]
    assert lines[-1].strip() == f"# live view: {api_host}/"
    checked = cli("check", env=exports)
    assert checked.returncode == 0, checked.stderr
    port = int(api_host.rsplit(":", 1)[1])
    assert not port_is_free(port)
    stopped = local_command.stop(signal.SIGINT)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stderr == ""
    assert stopped.stdout.strip().splitlines()[-1].startswith("stopped: received 0 events")
    assert port_is_free(port)


def test_local_stops_on_sigterm(local_command: Running) -> None:
    """SIGTERM stops it as cleanly as Ctrl-C."""
    local_command.read_until("# live view:")
    stopped = local_command.stop(signal.SIGTERM)
    assert stopped.returncode == 0 and "stopped:" in stopped.stdout


def test_local_port_in_use(mixpanel: LocalMixpanel) -> None:
    """A port already taken is one line, exit 1."""
    port = mixpanel.url.rsplit(":", 1)[1]
    line = assert_one_line_error(cli("local", "--port", port))
    assert f"cannot listen on 127.0.0.1:{port}" in line
