"""``otel-mixpanel local``: a local Mixpanel with its live view, in the foreground."""

from __future__ import annotations

import shlex
import signal
import time
from types import FrameType
from typing import Optional

from otel_mixpanel._config import is_loopback
from otel_mixpanel.testing import LocalMixpanel
from otel_mixpanel.testing._liveview import attach_live_view

from ._common import CliError


class _Stopped(Exception):
    """SIGINT or SIGTERM, raised in the main thread."""


def _raise_stopped(signum: int, frame: Optional[FrameType]) -> None:
    raise _Stopped


def startup_lines(mixpanel: LocalMixpanel) -> str:
    """What ``local`` prints: shell lines to point an application here, then the live view URL.

    Everything but the ``export`` lines is a ``#`` comment, so the block can be pasted into a
    shell as it is. Example::

        with LocalMixpanel() as mixpanel:
            print(startup_lines(mixpanel))
    """
    lines = [f"export {name}={shlex.quote(value)}" for name, value in mixpanel.env().items()]
    lines.append(f"# live view: {mixpanel.url}/")
    lines.append("# Ctrl-C stops the server")
    return "\n".join(lines)


def run_local(host: str, port: int) -> int:
    """Serve until SIGINT or SIGTERM, then stop cleanly and return 0."""
    if not is_loopback(host):
        # The exporter sends plain http only to loopback, and the live view has no login.
        raise CliError(
            f"--host must be a loopback address (127.0.0.1, ::1, localhost), not {host!r}", 2
        )
    mixpanel = LocalMixpanel(host=host, port=port)
    attach_live_view(mixpanel)
    # Both set explicitly: a shell starts background jobs with SIGINT ignored, and
    # `kill -INT` must still stop the server cleanly.
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            mixpanel.start()
        except OSError as error:
            raise CliError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        print(startup_lines(mixpanel), flush=True)
        while True:
            time.sleep(3600)  # interrupted by the signals; the server runs on its threads
    except _Stopped:
        pass
    finally:
        # A second signal while stopping must not leave a traceback or a half-closed socket.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        mixpanel.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(
        f"stopped: received {len(mixpanel.events)} events, {len(mixpanel.profile_updates)} "
        f"profile updates, {len(mixpanel.group_updates)} group updates, "
        f"{len(mixpanel.rejected)} rejected",
        flush=True,
    )
    return 0
