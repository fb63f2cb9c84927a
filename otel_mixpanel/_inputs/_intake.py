"""One ordered batch buffer for a destination's spans and log records.

Two batch processors (one per signal) each hold what they receive for up to
their schedule delay and export on their own timers, so a profile ``$set``
made on a span and a later ``$set`` made in a log record can reach the sending
queue in the wrong order. :func:`otel_mixpanel.configure` and the zero-code
configurator therefore put both signals through one buffer: the span and log
processors below append to the same deque in the order the application ended
its spans and emitted its records, and one worker thread translates each
batch, in that order, into one submission to the sending queue.

The calling thread pays about what the SDK's batch processors charge: a
sampled check, a length check and a deque append, and for a span, the
tagged check and a tuple of references (:func:`otel_mixpanel.trace.read_span`):
an untagged span never waits, and a tagged one waits as that tuple, not as a
span whose dozen objects the garbage collector would walk again and again on
the application's threads (a tagged span in a burst: 1.89 → 1.54 times a bare
span's cost, and a third more events/s; docs/performance.md). A full buffer
drops the newest item, counted as ``queue_full``; nothing is dropped silently.
"""

from __future__ import annotations

import atexit
import itertools
import operator
import os
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from otel_mixpanel._compat import LogRecordProcessor
from otel_mixpanel._context import instrumentation_suppressed
from otel_mixpanel._convention._translate import Record
from otel_mixpanel._inputs._exporter import MixpanelExporterBase
from otel_mixpanel._model import Message
from otel_mixpanel._offload import MIN_RUNNING, Offload
from otel_mixpanel._queue import SendingQueue
from otel_mixpanel._stats import apply
from otel_mixpanel.logs import read_log
from otel_mixpanel.trace import read_span

QUEUE_FULL = "queue_full"
_QUEUE_FULL_DETAIL = "the batch processor's queue was full; raise max_queue_size"
# Sized for bursts: 20 000 events offered as fast as a thread can go are all
# kept even if the worker is stalled (see docs/performance.md).
DEFAULT_MAX_QUEUE_SIZE = 20_480
DEFAULT_MAX_EXPORT_BATCH_SIZE = 1_000
DEFAULT_SCHEDULE_DELAY_MILLIS = 1_000
# The worker starts on a batch once this many items wait (or the batch size, if
# smaller), and takes up to the batch size. Each batch costs the application's
# thread a few handovers of the interpreter lock (the worker's wake-up, its
# pipe to the helper, the request that follows), so fewer, fuller batches cost
# it less: waking at 1 000 rather than 256, a tagged span in a burst costs
# 1.29 rather than 1.34 times a bare span, and 3 % more events/s arrive
# (interleaved in one process, 16 rounds each). It was 256 while whole spans
# waited here, for the garbage collector's sake; what waits now is light.
WAKE_AT = 1_000
_SPAN, _LOG = 0, 1
_INTAKES: weakref.WeakValueDictionary[int, Intake] = weakref.WeakValueDictionary()
_ALL: weakref.WeakSet[Intake] = weakref.WeakSet()
_registry_lock = threading.Lock()


class Intake:
    """The shared buffer and its worker; the processors are its two doors."""

    def __init__(
        self,
        queue: SendingQueue,
        *,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_export_batch_size: int = DEFAULT_MAX_EXPORT_BATCH_SIZE,
        schedule_delay_millis: float = DEFAULT_SCHEDULE_DELAY_MILLIS,
    ) -> None:
        self.queue = queue
        self.exporters: List[Optional[MixpanelExporterBase]] = [None, None]
        # Every exporter that opened a door (two configure() calls to the same
        # destination share this buffer): all are shut down with the last door.
        self._opened: List[MixpanelExporterBase] = []
        self._max_queue_size = max_queue_size
        self._batch_size = max_export_batch_size
        # Woken before the buffer can fill, however small it was made.
        self._wake_at = min(max_export_batch_size, WAKE_AT, max(1, max_queue_size // 2))
        self._delay = schedule_delay_millis / 1000
        self._items: Deque[Tuple[int, Any]] = deque()
        self._awake = threading.Event()
        self._export_lock = threading.Lock()
        self._doors = 0
        self._shutdown = False
        self._worker: Optional[threading.Thread] = None
        self.offload = Offload(queue.settings)
        _ALL.add(self)
        _stop_offloads_at_exit()

    def open_door(self, kind: int, exporter: MixpanelExporterBase) -> None:
        self.exporters[kind] = exporter
        if not any(opened is exporter for opened in self._opened):
            self._opened.append(exporter)
        self._doors += 1
        if self._worker is None:
            self._start()

    def _start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="otel-mixpanel-batch", daemon=True)
        self._worker.start()

    def offer(self, kind: int, item: Any) -> None:
        """On the application's thread: as cheap as the SDK's batch processor."""
        items = self._items
        if self._shutdown:
            # The SDK cannot remove a processor: after shutdown every span and
            # record still passes here (read, and only when tagged): a loss.
            self.after_shutdown()
            return
        if len(items) >= self._max_queue_size:
            self.queue.stats.dropped(QUEUE_FULL, detail=_QUEUE_FULL_DETAIL)
            return
        items.append((kind, item))
        if len(items) >= self._wake_at and not self._awake.is_set():
            self._awake.set()

    def after_shutdown(self) -> None:
        """A tagged span or record ended after its processor was shut down."""
        self.queue.stats.dropped("exporter_shut_down", detail="telemetry after shutdown()")

    def unreadable(self, error: Exception) -> None:
        """A span or record that could not be read as it ended: counted, never raised."""
        self.queue.stats.dropped("translation_error", detail=f"unreadable: {type(error).__name__}")

    def _run(self) -> None:
        while not self._shutdown:
            self._awake.wait(self._delay)
            self._awake.clear()
            self._export(everything=False)
            self.offload.idle()
            self.queue.stats.log_due()  # queue_full counts reach the log within a minute
        self._export(everything=True)

    def _export(self, *, everything: bool, deadline: Optional[float] = None) -> None:
        with instrumentation_suppressed(), self._export_lock:
            while self._items:
                batch = [self._items.popleft()
                         for _ in range(min(len(self._items), self._batch_size))]
                self._submit(batch, deadline, flushing=everything)
                if not everything and len(self._items) < self._wake_at:
                    break

    def _submit(
        self, batch: List[Tuple[int, Any]], deadline: Optional[float] = None, *,
        flushing: bool = False,
    ) -> None:
        """Translate runs of each signal in order, then submit: in the helper
        process when the batch is big enough and it is running.

        *flushing* (force_flush(), shutdown(): the application waits, its
        thread idle) splits a batch: the helper translates the first half
        while this thread translates the second, two cores instead of one for
        the last batches of a burst; the halves are submitted in order."""
        owner = self.exporters[_SPAN] or self.exporters[_LOG]
        if owner is None:
            return
        lost = len(batch)  # what an interruption here loses (items, then records)
        try:
            spans = self.exporters[_SPAN]
            if not flushing and spans is not None and all(kind == _SPAN for kind, _ in batch):
                # The usual busy batch: spans only, whose records the helper
                # makes itself from what read_span kept (None: made here, below).
                offloaded = self._spans_offloaded(spans, batch, deadline)
                if offloaded is not None:
                    batches, calls = offloaded
                    apply(calls, owner._stats)  # what the helper counted, counted here
                    lost = 0
                    self.queue.submit_encoded(batches)
                    return
            read: List[Tuple[MixpanelExporterBase, Record]] = []
            for kind, run in itertools.groupby(batch, key=operator.itemgetter(0)):
                exporter = self.exporters[kind]
                if exporter is not None:
                    read.extend((exporter, record)
                                for record in exporter._records_of([item for _, item in run]))
            cut = len(read)
            if flushing and len(read) >= 2 * MIN_RUNNING and self.offload.state == "running":
                cut = len(read) // 2
            here: List[List[Message]] = []  # the second half, translated meanwhile

            def meanwhile() -> None:
                here.append(_translate(read[cut:]))

            offloaded = self._offloaded(read[:cut], deadline,
                                        meanwhile if cut < len(read) else None)
            rest = here[0] if here else _translate(read[cut:])
            if offloaded is not None:
                batches, calls = offloaded
                apply(calls, owner._stats)  # what the helper counted, counted here
                lost = len(read) - cut  # the second half's records, until handed too
                self.queue.submit_encoded(batches)
                lost = 0
                owner._submit(rest, wait=False)
                return
            # No waiting for Mixpanel's answer: this thread must keep
            # draining the buffer whatever Mixpanel does (a hanging request
            # would otherwise fill it); force_flush() waits for answers.
            messages = _translate(read[:cut]) + rest
            lost = 0
            owner._submit(messages, wait=False)
        except Exception:  # pragma: no cover - never into the worker loop
            owner._logger.exception("Mixpanel export failed")
        except BaseException as error:
            # Ctrl-C or SystemExit in force_flush()/shutdown() on the application's
            # thread: the batch taken off the buffer is lost, and said so.
            if lost:
                owner._stats.dropped("export_interrupted", lost, detail=type(error).__name__)
            raise

    def _spans_offloaded(
        self, exporter: MixpanelExporterBase, batch: List[Tuple[int, Any]],
        deadline: Optional[float],
    ) -> Optional[Tuple[Any, Any]]:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self.offload.run_spans([item for _, item in batch],
                                          exporter._properties_of_resource,
                                          exporter._settings.trace_ids, timeout)
        except Exception:  # pragma: no cover - run_spans() keeps its own failures
            return None

    def _offloaded(
        self, read: List[Tuple[MixpanelExporterBase, Record]], deadline: Optional[float],
        meanwhile: Optional[Callable[[], None]] = None,
    ) -> Optional[Tuple[Any, Any]]:
        """The helper's answer for *read*, or None (translate here) whatever happens."""
        rows = [(record, exporter._settings.trace_ids) for exporter, record in read]
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self.offload.run(rows, timeout, meanwhile)
        except Exception:  # pragma: no cover - run() keeps its own failures
            return None

    def force_flush(self, timeout_millis: float) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        self._export(everything=True, deadline=deadline)
        return self.queue.flush(max(0.0, deadline - time.monotonic()))

    def close_door(self, timeout_millis: Optional[float]) -> None:
        """The last door closed: export what is held, then shut the exporters
        down with what is left of *timeout_millis* (their budget starts now)."""
        started = time.monotonic()
        self._doors -= 1
        if self._doors > 0:
            deadline = None if timeout_millis is None else started + timeout_millis / 1000
            self._export(everything=True, deadline=deadline)
            return
        self.offload.stopping = True  # the last batches: no helper started for them
        self._shutdown = True
        self._awake.set()
        if self._worker is not None:
            self._worker.join()
        self.offload.close()
        for exporter in self._opened:
            if exporter is not None:
                left = None
                if timeout_millis is not None:
                    left = max(0.0, timeout_millis - (time.monotonic() - started) * 1000)
                exporter.shutdown(left)

    def _after_fork(self) -> None:
        self._items.clear()  # the parent's to export
        self.offload.after_fork()
        self._awake = threading.Event()
        self._export_lock = threading.Lock()
        if not self._shutdown:
            self._start()


def _translate(read: List[Tuple[MixpanelExporterBase, Record]]) -> List[Message]:
    """The messages of *read*, each run of one exporter's records translated
    with its settings (its trace_ids)."""
    messages: List[Message] = []
    for exporter, run in itertools.groupby(read, key=operator.itemgetter(0)):
        messages.extend(exporter._messages([record for _, record in run]))
    return messages


def intake_for(exporter: MixpanelExporterBase, **settings: Any) -> Intake:
    """The intake of *exporter*'s sending queue (made with *settings* on first use)."""
    queue = exporter._queue
    with _registry_lock:
        intake = _INTAKES.get(id(queue))
        if intake is None or intake.queue is not queue or intake._shutdown:
            intake = Intake(queue, **{k: v for k, v in settings.items() if v is not None})
            _INTAKES[id(queue)] = intake
        return intake


class _Door:
    """What both processors do: open their door on the shared intake, and close it."""

    _kind: int
    _read: Callable[[Any], Any]  # read_span or read_log

    def __init__(self, exporter: MixpanelExporterBase, **settings: Any) -> None:
        self._intake = intake_for(exporter, **settings)
        self._intake.open_door(self._kind, exporter)
        self._done = False

    def shutdown(self, timeout_millis: Optional[float] = None) -> None:
        """Export what is held; the last of the two doors also shuts the
        exporters down (delivering within *timeout_millis* or the exporters'
        ``shutdown_timeout``)."""
        if not self._done:
            self._done = True
            self._intake.close_door(timeout_millis)

    def _feed(self, item: Any) -> None:
        """On the application's thread: read *item* now (only what Mixpanel
        needs waits, and only when tagged) and offer it. Never raises: what
        cannot be read is counted; what a door already shut down still gets
        (the SDK cannot remove a processor, and the buffer may serve other
        pipelines) is counted too."""
        try:
            kept = self._read(item)
        except Exception as error:  # never into the application's thread
            self._intake.unreadable(error)
            return
        if kept is not None:
            if self._done:
                self._intake.after_shutdown()
            else:
                self._intake.offer(self._kind, kept)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export what is held and wait until Mixpanel has answered for it."""
        return self._intake.force_flush(timeout_millis)


class OrderedSpanProcessor(_Door, SpanProcessor):
    """Feeds sampled spans, in the order they end, to the shared intake."""

    _kind = _SPAN
    _read = staticmethod(read_span)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled:
            self._feed(span)


class OrderedLogRecordProcessor(_Door, LogRecordProcessor):
    """Feeds log records, in the order they are emitted, to the shared intake."""

    _kind = _LOG
    _read = staticmethod(read_log)

    def on_emit(self, log_data: Any) -> None:
        self._feed(log_data)


_at_exit_registered = False


def _stop_offloads_at_exit() -> None:
    """At interpreter exit no helper is started for the last batches. Registered
    with the first intake, after the providers exist, so it runs before their
    own exit handlers (atexit runs the latest first)."""
    global _at_exit_registered  # noqa: PLW0603 - once per process
    if not _at_exit_registered:
        _at_exit_registered = True
        atexit.register(_no_new_helpers)


def _no_new_helpers() -> None:
    for intake in list(_ALL):
        intake.offload.stopping = True


def _after_fork_in_child() -> None:
    global _registry_lock  # noqa: PLW0603 - a fork while another thread held it
    _registry_lock = threading.Lock()
    for intake in list(_ALL):
        intake._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
