"""``otel-mixpanel spool status|replay DIR``: what waits in a spool, and sending it.

Replay stops only between batches: the first Ctrl-C (or SIGTERM) asks it to stop, the batch on
the wire is answered and settled in the spool, then it exits. Interrupting a batch in flight
would make the next run send that whole segment again (see ``otel_mixpanel._queue._spool``),
which is the one way a ``$add`` could be applied twice; so later Ctrl-Cs only repeat the
message. The wait is bounded by the timeout (default 10 s).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Mapping, Optional, TextIO

from otel_mixpanel._queue._transport import HTTPResponse, RequestsTransport, Transport
from otel_mixpanel.spool import SpoolStatus, replay_spool, spool_status

from ._common import CliError


def existing_spool(directory: str) -> Path:
    """*directory* as a Path, or CliError: the spool would create a missing one."""
    path = Path(directory)
    if not path.exists():
        raise CliError(f"no such spool directory: {directory}")
    if not path.is_dir():
        raise CliError(f"not a directory: {directory}")
    return path


def human_bytes(size: int) -> str:
    """``1536`` → ``"1.5 KiB"``.

    >>> human_bytes(512), human_bytes(1536)
    ('512 B', '1.5 KiB')
    """
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    """``90`` → ``"1 min ago"``.

    >>> human_age(5), human_age(90), human_age(7200), human_age(200000)
    ('5 s ago', '1 min ago', '2 h ago', '2 days ago')
    """
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} days ago"


def format_status(directory: Path, status: SpoolStatus, now: Optional[float] = None) -> str:
    """The lines ``spool status`` prints.

    Example::

        print(format_status(Path("/var/spool/mixpanel"), spool_status("/var/spool/mixpanel")))
    """
    if status.segments == 0:
        return f"spool {directory}: empty"
    now = time.time() if now is None else now
    lines = [
        f"spool     {directory}",
        f"records   {status.records}",
        f"bytes     {status.bytes} ({human_bytes(status.bytes)})",
        f"segments  {status.segments}",
    ]
    if status.oldest is not None:
        written = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(status.oldest))
        lines.append(f"oldest    {written} ({human_age(now - status.oldest)})")
    for endpoint, count in sorted(status.by_endpoint.items()):
        lines.append(f"  {endpoint:<9} {count} records")
    return "\n".join(lines)


def run_status(directory: str) -> int:
    """``spool status DIR``: print what waits; 0 (even when records wait: it is a report)."""
    path = existing_spool(directory)
    print(format_status(path, spool_status(path)))
    return 0


class _RecordingTransport(Transport):
    """The usual transport, remembering the last answer: it says why records stayed."""

    def __init__(self) -> None:
        self._inner = RequestsTransport()
        self.last: Optional[HTTPResponse] = None

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> HTTPResponse:
        """POST through ``requests`` and keep the answer."""
        self.last = self._inner.post(url, body, headers, timeout)
        return self.last

    def close(self) -> None:
        """Close the connections."""
        self._inner.close()


class _Stop(Exception):
    """Raised from the progress callback, between batches, once a stop was asked for."""


class ProgressBar:
    """``[#########...........]  45/100 records`` on one line of *stream*, redrawn in place."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.drawn = False

    def draw(self, done: int, total: int) -> None:
        """Redraw for *done* of *total* records."""
        filled = self.width if total <= 0 else self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} records")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        """End the bar's line, if one was drawn."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def _why(transport: _RecordingTransport) -> str:
    last = transport.last
    if last is None:
        return "Mixpanel was not reached"
    if last.status == 0:
        return f"Mixpanel is unreachable ({last.error})"
    if last.status in (401, 403):
        return f"Mixpanel refused the credentials ({last.status}): run `otel-mixpanel check`"
    try:
        reason = json.loads(last.body).get("error")
    except (ValueError, AttributeError):
        reason = None
    return f"Mixpanel answered {last.status}" + (f" ({reason})" if reason else "")


def run_replay(directory: str, settings: Mapping[str, Any]) -> int:
    """``spool replay DIR``: send what waits; 0 when the spool is empty afterwards, else 1."""
    path = existing_spool(directory)
    stop = threading.Event()
    bar = ProgressBar(sys.stderr)

    def ask_to_stop(signum: int, frame: Optional[FrameType]) -> None:
        bar.finish()
        print("stopping after the batch in flight (Ctrl-C again does not hurry it: a batch "
              "cut short would be sent twice next time)", file=sys.stderr)
        stop.set()

    def progress(done: int, total: int) -> None:
        bar.draw(done, total)
        if stop.is_set():
            raise _Stop  # the segment is settled: stopping here loses and repeats nothing

    transport = _RecordingTransport()
    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = replay_spool(path, progress=progress, transport=transport, **settings)
        interrupted = False
    except _Stop:
        result, interrupted = None, True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        bar.finish()
    remaining = spool_status(path).records
    if result is not None and result.locked:
        raise CliError(
            f"another process is replaying {directory}; {remaining} records wait there"
        )
    if remaining == 0:
        done = 0 if result is None else result.done_records
        print(f"sent {done} records; spool {directory} is empty")
        return 0
    if interrupted or stop.is_set():
        why = "interrupted; run the same command again to send them"
    elif result is not None and result.error is not None:
        why = f"replay failed: {result.error}"
    else:
        why = _why(transport)
    raise CliError(f"{remaining} records remain in {directory}: {why}")
