"""Translation off the application's interpreter lock, in a helper process.

The batch worker translates, limits and encodes about 12 µs of Python per
event, and while it does, the application's request threads wait for the
interpreter lock: under load, that is most of what a tagged event costs them.
When a batch is big (the application is busy), the worker hands its records to
a helper process and waits on a pipe, holding no lock; the helper runs the very
same functions on another core and answers with the encoded records, which go
into the same sending queue. Small batches (light load) never start it; it
stops after a minute without work, and the application can fork at any time.

Whatever goes wrong (it cannot start, it dies, a value would not cross the
pipe unchanged) the batch is translated in the application as before, so
nothing is lost or sent differently; a failure is logged once, and the
application then keeps the work for the rest of its life.
``OTEL_EXPORTER_MIXPANEL_OFFLOAD=off`` (or ``offload="off"``) keeps it there
from the start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import IO, Any, Callable, Optional, Sequence, Tuple

from otel_mixpanel._config import Settings
from otel_mixpanel._offload._wire import (
    Batches,
    Calls,
    Pipe,
    Row,
    dump_records,
    dump_settings,
    dump_spans,
    load_reply,
    read_frame,
    widen,
    write_frame,
)

__all__ = ["MIN_RECORDS", "MIN_RUNNING", "Offload"]

_logger = logging.getLogger("otel_mixpanel")
# A batch this big means the application is busy: below it, the pipe's round
# trip is not worth it (and an application under light load never starts it).
MIN_RECORDS = 256
# Once it runs (the application has been busy within the last minute), smaller
# batches go too: a hundred records translated here hold the interpreter lock
# for over a millisecond, handed over for a fifth of that, and the last
# batches of a burst then take both cores instead of one.
MIN_RUNNING = 32
IDLE_SECONDS = 60.0
# A batch takes it milliseconds; this long means it hangs (or the machine does):
# the batch is translated here, and the helper is not used again.
ANSWER_SECONDS = 10.0
_BOOT = (  # Ctrl-C ignored before anything else: the application decides when it stops
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from otel_mixpanel._offload._helper import main; sys.exit(main())"
)


def supported() -> Optional[str]:
    """Why no helper can be started here, or None when one can."""
    if getattr(sys, "frozen", False):
        return "a frozen application"
    name = os.path.basename(sys.executable or "").lower()
    if not name.startswith("python"):
        return f"the interpreter is not a python executable ({name or 'unknown'})"
    for library in ("gevent", "eventlet"):
        # Their patched pipes and threads are cooperative: not what this relies on.
        if library in sys.modules:
            return f"{library} is loaded"
    return None


class Offload:
    """The application's side: starts the helper on demand, hands it batches."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings  # its ``offload`` says whether a helper may start at all
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._pipe: Optional[Pipe] = None
        self._ready = threading.Event()
        self._failed: Optional[str] = None
        self._last_used = 0.0
        self.batches = 0  # handed over and answered (tests, status)
        self.stopping = False  # set when the application shuts the pipeline down

    @property
    def state(self) -> str:
        """``off``, ``failed: ...``, ``idle``, ``starting`` or ``running``."""
        if not self._settings.offload:
            return "off"
        if self._failed is not None:
            return f"failed: {self._failed}"
        if self._process is None:
            return "idle"
        return "running" if self._ready.is_set() else "starting"

    def run(
        self, rows: Sequence[Row], timeout: Optional[float] = None,
        meanwhile: Optional[Callable[[], None]] = None,
    ) -> Optional[Tuple[Batches, Calls]]:
        """The encoded batches and counts for *rows*, or None: translate them here.
        Waits for the helper at most *timeout* seconds (and ANSWER_SECONDS).
        *meanwhile* is called while the helper works, if it got the rows."""
        return self._exchange(len(rows), lambda: dump_records(rows), timeout, meanwhile)

    def run_spans(
        self, ended: Sequence[Any], properties_of: Callable[[Any], Any], trace_ids: bool,
        timeout: Optional[float] = None,
    ) -> Optional[Tuple[Batches, Calls]]:
        """The same for spans as :func:`otel_mixpanel.trace.read_span` kept them
        (the helper makes their records); None also when they are not all plain
        tagged spans: make their records, and :meth:`run` those."""
        return self._exchange(
            len(ended), lambda: dump_spans(ended, properties_of, trace_ids), timeout, None)

    def _exchange(
        self, count: int, dump: Callable[[], Optional[bytes]], timeout: Optional[float],
        meanwhile: Optional[Callable[[], None]],
    ) -> Optional[Tuple[Batches, Calls]]:
        if not self._settings.offload or self._failed is not None or count < MIN_RUNNING:
            return None
        if count < MIN_RECORDS and not self._ready.is_set():
            return None  # light load: not worth starting it, or waiting for it
        with self._lock:
            if self._process is None:
                self._start()
                return None
            if not self._ready.is_set():
                return None
            body = dump()
            if body is None:
                return None
            if self._pipe is None:  # after the ready frame: the reader thread is done
                assert self._process.stdin is not None and self._process.stdout is not None
                self._pipe = Pipe(self._process.stdin, self._process.stdout)
            budget = ANSWER_SECONDS if timeout is None else min(ANSWER_SECONDS, timeout)
            try:
                reply = self._pipe.exchange(body, time.monotonic() + budget, meanwhile)
                if reply is None:
                    raise EOFError(f"it ended (exit code {self._process.poll()})")
                result = load_reply(reply)
            except TimeoutError as error:
                if budget < ANSWER_SECONDS:
                    # The caller's budget ran out (a short force_flush), not the
                    # helper's: this one stops (its late answer must never pass for
                    # the next batch's) but another may start.
                    self._stop(wait=0.0)
                    return None
                self._fail(f"{type(error).__name__}: {error}")
                return None
            except Exception as error:
                self._fail(f"{type(error).__name__}: {error}")
                return None
            except BaseException:
                # Interrupted mid-exchange (Ctrl-C, SystemExit): its answer would
                # be read as the next batch's. This helper is done; another may start.
                self._stop(wait=0.0)
                raise
            self._last_used = time.monotonic()
            self.batches += 1
            return result

    def _start(self) -> None:
        if self.stopping or sys.is_finalizing():  # not worth a process now
            return
        why = supported()
        if why is not None:
            self._failed = why
            return
        try:
            # Isolated (-I): no PYTHON* variables, so no sitecustomize of
            # opentelemetry-instrument instrumenting the helper itself; the
            # application's own import path is given instead, whatever set it up.
            # Its own session: a Ctrl-C for the application's process group
            # never reaches it (the application decides when it stops).
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, json.dumps(sys.path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                start_new_session=True,
            )
            assert process.stdin is not None and process.stdout is not None
            widen(process.stdin)
            widen(process.stdout)
            write_frame(process.stdin, dump_settings(self._settings))
            self._process = process
            self._pipe = None
            self._ready = threading.Event()
            threading.Thread(target=self._await_ready, args=(process.stdout, self._ready),
                             name="otel-mixpanel-offload", daemon=True).start()
        except Exception as error:
            self._fail(f"{type(error).__name__}: {error}")
        self._last_used = time.monotonic()

    def _await_ready(self, answers: IO[bytes], ready: threading.Event) -> None:
        try:
            hello = read_frame(answers)
        except (OSError, ValueError):  # stopped while starting: its pipe closed under us
            return
        if hello is not None:
            ready.set()
        else:  # it could not even start: say why once, keep the work here
            with self._lock:
                if self._process is not None and self._process.stdout is answers:
                    self._fail("it ended while starting (see its output above)")

    def _fail(self, why: str) -> None:
        self._failed = why
        _logger.warning("otel-mixpanel: the helper process that translates under load failed "
                        "(%s); translating in the application from now on", why)
        self._stop(wait=0.0)

    def idle(self) -> None:
        """Stop a helper that has had no batch for a minute (it starts again when needed)."""
        if self._process is not None and time.monotonic() - self._last_used > IDLE_SECONDS:
            with self._lock:
                if time.monotonic() - self._last_used > IDLE_SECONDS:  # still idle
                    self._stop(wait=1.0)

    def close(self) -> None:
        """Stop the helper (the application is done with it)."""
        with self._lock:
            self._stop(wait=2.0)

    def _stop(self, wait: float) -> None:
        process, self._process = self._process, None
        pipe, self._pipe = self._pipe, None
        self._ready = threading.Event()
        if pipe is not None:
            pipe.close()
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            process.wait(wait)  # it ends when its input does
        except subprocess.TimeoutExpired:
            process.kill()
            # Stuck in the kernel: reaped when it can be, never the worker's problem.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def after_fork(self) -> None:
        """In a forked child: the helper is the parent's. Our copies of its pipes
        are closed (else it would never see its input end), never used."""
        process, self._process = self._process, None
        self._pipe = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.stopping = False
        if process is not None:
            for stream in (process.stdin, process.stdout):
                try:
                    if stream is not None:
                        stream.close()  # unbuffered: nothing to write to the parent's helper
                except OSError:
                    pass
            process.returncode = 0  # not ours to wait for
