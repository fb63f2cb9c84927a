"""Pre-fork workers and short-lived jobs: what the web examples do not show.

Run it::

    python examples/worker.py

The parent sets up once and records an event, then forks two workers (as
gunicorn, uWSGI or a job runner would). Each worker sends its own events over
its own connection; nothing the parent had queued is sent twice; and each
short-lived worker flushes before it exits, within a bound, so nothing is lost
when it ends. Without ``OTEL_EXPORTER_MIXPANEL_TOKEN`` it uses a local Mixpanel
and prints what arrived.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Optional

from opentelemetry import trace

import otel_mixpanel
from otel_mixpanel.testing import LocalMixpanel

tracer = trace.get_tracer("worker")


def run_job(worker: int, job: int) -> None:
    """A unit of work, tagged like any request."""
    with tracer.start_as_current_span("job") as span:
        span.set_attribute("mixpanel.event", "Job Done")
        span.set_attribute("mixpanel.distinct_id", f"worker-{worker}")
        span.set_attribute("mixpanel.properties.job", job)
        span.set_attribute("mixpanel.people.add.jobs", 1)


def main() -> int:
    local: Optional[LocalMixpanel] = None
    if not os.environ.get("OTEL_EXPORTER_MIXPANEL_TOKEN"):
        local = LocalMixpanel().start()
        os.environ.update(local.env())
    pipeline = otel_mixpanel.configure()
    with tracer.start_as_current_span("boot") as span:
        span.set_attribute("mixpanel.event", "Parent Started")  # still queued at fork
    children = []
    for worker in range(2):
        pid = os.fork()
        if pid == 0:  # a worker: its own queue, thread and connection
            for job in range(3):
                run_job(worker, job)
            flushed = pipeline.shutdown(timeout_millis=10_000)  # short-lived: flush, bounded
            os._exit(0 if flushed else 1)
        children.append(pid)
    failures = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children)
    pipeline.shutdown()
    if local is not None:
        counts = Counter(event["event"] for event in local.events)
        print(f"Parent Started received {counts['Parent Started']} time(s)")
        print(f"Job Done received {counts['Job Done']} time(s)")
        for worker in range(2):
            print(f"profile worker-{worker}: {local.profiles.get(f'worker-{worker}')}")
        local.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
