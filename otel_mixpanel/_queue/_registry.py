"""One sending queue per Mixpanel destination in a process.

Exporters with the same delivery settings (and the same transport and retry
policy) share one queue: their records wait in one line, one thread sends
them, and one set of counters describes them. The queue closes when the last
exporter using it shuts down; an exporter made afterwards gets a new one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from otel_mixpanel import environment_variables as env
from otel_mixpanel._config import Settings
from otel_mixpanel._exceptions import ConfigurationError
from otel_mixpanel._queue._retry import RetryPolicy
from otel_mixpanel._queue._sending import SendingQueue
from otel_mixpanel._queue._transport import Transport

_logger = logging.getLogger("otel_mixpanel")
_lock = threading.Lock()
_queues: Dict[Any, Tuple[SendingQueue, int]] = {}
# Set by the pytest plugin: rewrites the destination of every queue made from
# now on (so that no test can reach a real Mixpanel project).
_redirect: Optional[Callable[[Settings], Settings]] = None


def redirect(rewrite: Optional[Callable[[Settings], Settings]]) -> None:
    """Rewrite the settings of every queue made from now on (None: stop)."""
    global _redirect  # noqa: PLW0603 - one process-wide hook, set by the pytest plugin
    with _lock:
        _redirect = rewrite


def _key(settings: Settings, transport: Optional[Transport], policy: RetryPolicy) -> Any:
    # What only shapes records before they are queued does not split the queue.
    delivery = dataclasses.replace(settings, resource_attributes=(), trace_ids=True)
    return (delivery, transport, policy)


def acquire(
    settings: Settings,
    *,
    transport: Optional[Transport] = None,
    retry_policy: Optional[RetryPolicy] = None,
) -> Tuple[SendingQueue, bool]:
    """The queue for *settings*, and whether it was made now; counts one user."""
    policy = retry_policy or RetryPolicy()
    if _redirect is not None:
        settings = _redirect(settings)
    key = _key(settings, transport, policy)
    with _lock:
        queue, users = _queues.get(key, (None, 0))
        created = queue is None
        if queue is None:
            try:
                queue = SendingQueue(settings, transport=transport, retry_policy=policy)
            except OSError as error:  # the spool directory cannot be made or used
                raise ConfigurationError(
                    f"spool_dir= (or {env.OTEL_EXPORTER_MIXPANEL_SPOOL_DIR}) "
                    f"{settings.spool_dir!r} cannot be used: {error}"
                ) from error
            _warn_if_split(key)
        _queues[key] = (queue, users + 1)
    return queue, created


def _warn_if_split(key: Any) -> None:
    """Under the lock: a second queue for the same project means two lines of
    records that may overtake each other; say which settings split them."""
    mine, transport, policy = key
    if transport is not None:
        return  # a transport of its own (tests, benchmarks): a queue of its own, meant
    for (theirs, their_transport, their_policy), _ in _queues.items():
        same_project = (mine.base_url, mine.token, mine.project_id) == (
            theirs.base_url, theirs.token, theirs.project_id
        )
        if not same_project or their_transport is not None:
            continue
        # The keys hold the delivery settings only: what differs there splits the queue.
        differ = sorted(f.name for f in dataclasses.fields(Settings)
                        if getattr(mine, f.name) != getattr(theirs, f.name))
        if policy != their_policy:
            differ.append("retry_policy")
        if differ:
            _logger.warning(
                "Mixpanel: a second sending queue for the same project, because %s differ "
                "between exporters; records of the two may reach Mixpanel out of order. "
                "Give every exporter the same settings to share one queue.",
                ", ".join(differ),
            )
            return


def release(queue: SendingQueue, budget: float) -> bool:
    """One user less; the last one closes the queue within *budget* seconds.
    True when nothing was left undelivered (or others still use the queue)."""
    with _lock:
        for key, (held, users) in list(_queues.items()):
            if held is queue:
                if users > 1:
                    _queues[key] = (held, users - 1)
                    return True
                del _queues[key]
                break
    return queue.close(budget)


def _reset_after_fork() -> None:
    global _lock  # noqa: PLW0603 - a fork while another thread held it would deadlock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
