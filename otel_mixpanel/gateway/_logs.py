"""The gateway's log: what it writes (rate-limited refusals) and, for the
``otel-mixpanel gateway`` process only, how it looks (text or one JSON object
per line).

The library never configures logging: :class:`Refusals` writes to the
``otel_mixpanel.gateway`` logger like any library, and an application that
embeds the gateway decides where that goes. :func:`configure_process_logging`
is for the command, which owns its process.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from typing import IO, Any, Callable, Dict, Optional, Tuple

__all__ = [
    "REFUSAL_LOG_INTERVAL",
    "JSONFormatter",
    "Refusals",
    "TextFormatter",
    "configure_process_logging",
]

# A refusal reason writes its first line at once (a wrong token or a full queue
# shows immediately), then at most one line per REFUSAL_LOG_INTERVAL seconds
# carrying the count since the previous line: at most 6 lines a minute per
# reason, whatever the request rate, and a count is never older than 10 s.
REFUSAL_LOG_INTERVAL = 10.0

# Why a request was refused: what the sender got, and what to look at.
REASONS: Dict[str, str] = {
    "unauthenticated": "missing or wrong bearer token (401, gRPC UNAUTHENTICATED)",
    "too_large": "body past max_request_bytes after decompression (413)",
    "unsupported_media_type": "content type neither protobuf nor JSON (415)",
    "bad_request": "body that can never be accepted (400)",
    "busy": "sending queue full or too many requests in flight (503, gRPC UNAVAILABLE; "
            "senders keep the data and retry)",
}

Timer = Callable[[float, Callable[[], None]], Any]


def _thread_timer(delay: float, function: Callable[[], None]) -> Any:
    timer = threading.Timer(delay, function)
    timer.daemon = True
    timer.name = "otel-mixpanel-gateway-log"
    timer.start()
    return timer


class Refusals:
    """Counts refused requests by reason and logs them, rate limited.

    The first refusal of a reason is logged at once; later ones within
    *interval* seconds of that line are counted and written in one line when
    the interval is over (a timer, so a burst followed by silence is still
    reported) or at :meth:`flush`. Each line carries ``count`` (refusals since
    the previous line of that reason) and ``total`` (since start): the counts
    of a reason's lines add up to its total.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = REFUSAL_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        timer: Timer = _thread_timer,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._timer = timer
        self._lock = threading.Lock()
        self._totals: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._last: Dict[str, float] = {}
        self._timers: Dict[str, Tuple[object, Any]] = {}  # reason: (its key, the timer)
        self._closed = False

    def note(self, reason: str, detail: str = "") -> None:
        """One request refused for *reason* (a key of ``REASONS``)."""
        now = self._clock()
        line: Optional[Tuple[str, int, int, str]] = None
        with self._lock:
            self._totals[reason] += 1
            self._pending[reason] += 1
            last = self._last.get(reason)
            if last is None or now - last >= self._interval:
                line = self._take(reason, now, detail)
            elif reason not in self._timers and not self._closed:
                key = object()
                self._timers[reason] = (key, self._timer(
                    max(0.0, last + self._interval - now), lambda: self._due(reason, key)))
        if line is not None:
            self._write(*line)

    def totals(self) -> Dict[str, int]:
        """Refused requests by reason since start."""
        with self._lock:
            return dict(self._totals)

    def flush(self) -> None:
        """Write every held-back count now, and stop the timers (at shutdown)."""
        with self._lock:
            self._closed = True
            for reason in list(self._timers):
                self._cancel(reason)
            now = self._clock()
            lines = [self._take(reason, now, "") for reason in sorted(self._pending)]
        for line in lines:
            self._write(*line)

    def _due(self, reason: str, key: object) -> None:
        with self._lock:
            if self._timers.get(reason, (None,))[0] is not key:
                return  # a line was written meanwhile: that timer is no longer wanted
            del self._timers[reason]
            if not self._pending[reason]:
                return
            line = self._take(reason, self._clock(), "")
        self._write(*line)

    def _cancel(self, reason: str) -> None:
        _, timer = self._timers.pop(reason)
        cancel = getattr(timer, "cancel", None)
        if cancel is not None:
            cancel()

    def _take(self, reason: str, now: float, detail: str) -> Tuple[str, int, int, str]:
        """Under the lock: the line for *reason*'s pending count, which restarts
        (and so does its interval: a timer set for the previous one is dropped)."""
        if reason in self._timers:
            self._cancel(reason)
        self._last[reason] = now
        return reason, self._pending.pop(reason), self._totals[reason], detail

    def _write(self, reason: str, count: int, total: int, detail: str) -> None:
        why = REASONS.get(reason, reason)
        if detail:
            why = f"{why}: {detail}"
        noun = "request" if count == 1 else "requests"
        fields: Dict[str, Any] = {"event": "refused", "reason": reason, "count": count,
                                  "total": total}
        if detail:
            fields["detail"] = detail
        if count == total:
            self._logger.warning("refused %d %s: %s", count, noun, why, extra=fields)
        else:
            self._logger.warning("refused %d more %s (%d since start): %s", count, noun, total,
                                 why, extra=fields)


# Attributes every LogRecord has: anything else came with ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName", "color_message",  # uvicorn's ANSI copy of the message
}


def _utc(created: float) -> str:
    """RFC 3339, UTC, milliseconds: ``2025-05-01T10:00:00.123Z``."""
    moment = datetime.fromtimestamp(created, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (RFC 3339 UTC),
    ``level``, ``logger``, ``message``, the fields given with ``extra=``, and
    ``exception`` (the traceback text) when there is one.

    >>> record = logging.makeLogRecord({"name": "g", "levelname": "INFO", "msg": "up",
    ...                                 "created": 0.0, "event": "listening"})
    >>> line = json.loads(JSONFormatter().format(record))
    >>> line["time"], line["level"], line["message"], line["event"]
    ('1970-01-01T00:00:00.000Z', 'INFO', 'up', 'listening')
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: Dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and (
            len(record.args) == 5
        ):
            client, method, path, _, status = record.args
            entry.update(event="request", client=client, method=method, path=path,
                         status=status)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people: ``2025-05-01T10:00:00.123Z INFO otel_mixpanel.gateway: message``,
    the traceback on the lines after, as ``logging`` writes it."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        """RFC 3339 UTC, as in the JSON lines."""
        return _utc(record.created)


def configure_process_logging(
    log_format: str, level: str, stream: Optional[IO[str]] = None
) -> logging.Handler:
    """Send every logger of the process (ours, uvicorn's, grpc's, warnings) to
    one stderr handler in *log_format* at *level*: for the command only.

    uvicorn's own lines (startup chatter, per-request access lines) show only
    at ``debug``; its warnings and errors always.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    number = logging.getLevelName(level.upper())
    root.setLevel(number)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(number if number <= logging.DEBUG else max(number, logging.WARNING))
    logging.captureWarnings(True)
    previous = threading.excepthook

    def excepthook(args: Any) -> None:
        if args.exc_type is SystemExit:
            previous(args)
            return
        thread = args.thread.name if args.thread is not None else "?"
        logging.getLogger("otel_mixpanel.gateway").error(
            "unhandled exception in thread %s", thread, extra={"event": "crash"},
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    threading.excepthook = excepthook
    return handler

