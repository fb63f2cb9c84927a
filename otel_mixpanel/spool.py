"""Inspect and replay a spool directory on demand.

Exporters with ``spool_dir=`` keep their sending queue there and send it by
themselves, a restart included; these functions are for everything else: a
one-off recovery, a cron job, the command line::

    from otel_mixpanel.spool import replay_spool, spool_status

    print(spool_status("/var/spool/mixpanel"))
    result = replay_spool("/var/spool/mixpanel", token="...", region="eu")
    print(result.done_records, "sent,", result.kept_records, "still waiting")

Replaying is safe to interrupt and to run again: a record leaves the spool only
once Mixpanel has answered for it, and another process replaying the same
directory at the same time makes this one return at once (``locked=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

from otel_mixpanel._config import resolve_settings
from otel_mixpanel._model import Endpoint
from otel_mixpanel._queue import Client
from otel_mixpanel._queue._retry import RetryPolicy
from otel_mixpanel._queue._spool import ReplayResult, Spool, SpoolStatus
from otel_mixpanel._queue._transport import Transport
from otel_mixpanel._stats import Stats

__all__ = ["ReplayResult", "SpoolStatus", "replay_spool", "spool_status"]


def spool_status(directory: Union[str, Path]) -> SpoolStatus:
    """What is waiting: records, bytes, segments, the oldest write time."""
    return Spool(directory).status()


def replay_spool(
    directory: Union[str, Path],
    *,
    progress: Optional[Callable[[int, int], None]] = None,
    retry_policy: Optional[RetryPolicy] = None,
    transport: Optional[Transport] = None,
    **settings: Any,
) -> ReplayResult:
    """Send what waits in *directory*, oldest first, until done or Mixpanel fails.

    *settings* are the exporters' keyword arguments (``token``, ``region``,
    ``api_host``, ...), each defaulting to its ``OTEL_EXPORTER_MIXPANEL_*``
    variable. ``progress(done, total)`` is called after each batch.

    Raises:
        ConfigurationError: missing credentials or an invalid setting.
    """
    settings_ = resolve_settings(**settings)
    stats = Stats()
    client = Client(settings_, transport)

    def send(endpoint: str, records: List[bytes]) -> Sequence[int]:
        try:
            target = Endpoint(endpoint)
        except ValueError:
            # Not ours to send (a damaged or foreign header): leave the spool, counted.
            stats.dropped("spool_unknown_endpoint", len(records), detail=endpoint[:40])
            return []
        outcome = client.attempt(target, records, settings_.timeout, stats)
        if outcome.too_large:  # one record at a time rather than giving up
            return [i for i in outcome.remaining
                    if client.attempt(target, [records[i]], settings_.timeout, stats).remaining]
        return outcome.remaining

    del retry_policy  # one pass: a failure ends it, and the records stay for the next
    try:
        return Spool(directory).replay(send, progress=progress)
    finally:
        client.close()
