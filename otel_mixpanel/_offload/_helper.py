"""The helper process (started by :class:`otel_mixpanel._offload.Offload`).

Reads the settings, says it is ready, then answers each batch of records with
their messages translated, limited and encoded exactly as the application
would have (the same functions), and what it counted. Ends when the
application closes the pipe. It opens no socket and no file: delivery stays in
the application's sending queue.
"""

from __future__ import annotations

import signal
import sys

from otel_mixpanel._convention._translate import translate_all
from otel_mixpanel._offload._wire import (
    dump_reply,
    load_records,
    load_settings,
    read_frame,
    write_frame,
)
from otel_mixpanel._queue._client import prepare
from otel_mixpanel._queue._limits import Limits
from otel_mixpanel._stats import Tally

READY = b"ready"


def main() -> int:
    """Serve until the application closes the pipe (or is gone)."""
    # Ctrl-C reaches the whole process group: the application decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return _serve()
    except (BrokenPipeError, ConnectionResetError):  # the application stopped listening
        return 0


def _serve() -> int:
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing printed may ever corrupt a frame
    hello = read_frame(requests)
    if hello is None:
        return 0
    try:
        settings = load_settings(hello)
    except ValueError as error:  # another release on disk than the application's
        print(f"otel-mixpanel helper: {error}", file=sys.stderr)
        return 3
    stats = Tally()
    limits = Limits(stats, allowlist=settings.property_allowlist,
                    denylist=settings.property_denylist)
    write_frame(answers, READY)
    while True:
        body = read_frame(requests)
        if body is None:
            return 0
        stats.calls = []
        messages = []
        rows = load_records(body)
        start = 0
        # Runs of one trace_ids setting (the span and log exporters may differ).
        while start < len(rows):
            flag = rows[start][1]
            end = start
            while end < len(rows) and rows[end][1] is flag:
                end += 1
            messages.extend(translate_all([r for r, _ in rows[start:end]], stats, trace_ids=flag))
            start = end
        write_frame(answers, *dump_reply(prepare(messages, limits, settings, stats), stats.calls))


if __name__ == "__main__":
    sys.exit(main())
