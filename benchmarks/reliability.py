"""The fault table: what reaches Mixpanel when it misbehaves, with and without the spool.

    python benchmarks/reliability.py [--write docs/reliability.md]

Each scenario sends 200 tagged spans through the SDK's BatchSpanProcessor and
our exporter to a local Mixpanel that misbehaves as scripted. Every span
carries one event and one ``$add`` of a property of its own, so the profile
shows exactly how often each update was applied. Retry timings are shortened
(the behaviour is the same as with the defaults, only faster). The same
scenarios run as tests in tests/test_reliability.py.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_mixpanel import MixpanelSpanExporter, RetryPolicy
from otel_mixpanel.testing import LocalMixpanel

SPANS = 200
TIMEOUT = 1.0
POLICY = RetryPolicy(initial=0.05, maximum=0.2, jitter=(0.0, 0.0), outage_pause=0.5)
REFUSED = {"E7", "E13"}  # the partial-400 scenario's refused events (and their updates)


@dataclass(frozen=True)
class Row:
    """One scenario's outcome."""

    scenario: str
    spool: bool
    offered: int
    delivered: int
    resent_copies: int
    lost: int
    updates_offered: int
    applied_once: int
    applied_twice: int
    updates_lost: int
    refused: int


class Run:
    """A local Mixpanel, a tracer pipeline to it, and the counting."""

    def __init__(self, spool_dir: Optional[str], server: LocalMixpanel) -> None:
        self.spool_dir = spool_dir
        self.server = server
        self.sent = 0
        self.provider, self.exporter = self.pipeline()

    def pipeline(self) -> tuple[TracerProvider, MixpanelSpanExporter]:
        exporter = MixpanelSpanExporter(
            token=self.server.token, api_host=f"http://127.0.0.1:{self.server.port}",
            timeout=TIMEOUT, retry_policy=POLICY, spool_dir=self.spool_dir,
        )
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(
            exporter, max_export_batch_size=50, schedule_delay_millis=60_000
        ))
        return provider, exporter

    def emit(self, count: int) -> None:
        tracer = self.provider.get_tracer("reliability")
        for _ in range(count):
            name = f"E{self.sent}"
            with tracer.start_as_current_span("step") as span:
                span.set_attribute("mixpanel.event", name)
                span.set_attribute("mixpanel.distinct_id", "u")
                span.set_attribute(f"mixpanel.people.add.{name}", 1)
            self.sent += 1
        self.provider.force_flush()

    def restart(self) -> None:
        """Shut the pipeline down and start a new one on the same spool."""
        self.provider.shutdown()
        self.provider, self.exporter = self.pipeline()

    def settle(self, expected_events: int) -> None:
        """Give a spool replay time to finish, then shut down."""
        if self.spool_dir is not None:
            self.server.wait_for(
                lambda m: len(m.unique_events()) >= expected_events
                and len(m.profile_updates) >= expected_events,
                timeout=20,
            )
        self.provider.shutdown()

    def row(self, scenario: str) -> Row:
        server = self.server
        unique = server.unique_events()
        profile: Dict[str, int] = server.profiles.get("u", {})
        refused = len(server.rejected) // 2
        return Row(
            scenario=scenario,
            spool=self.spool_dir is not None,
            offered=self.sent,
            delivered=len(unique),
            resent_copies=len(server.events) - len(unique),
            lost=self.sent - len(unique) - refused,
            updates_offered=self.sent,
            applied_once=sum(1 for v in profile.values() if v == 1),
            applied_twice=sum(1 for v in profile.values() if v > 1),
            updates_lost=self.sent - len(profile) - refused,
            refused=refused,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def outage_then_recovery(run: Run) -> None:
    """Mixpanel unreachable for the first half, then back."""
    run.server.stop()
    run.emit(SPANS // 2)
    run.server.start()
    time.sleep(POLICY.outage_pause + 0.1)  # the next export probes again
    run.emit(SPANS // 2)
    run.settle(SPANS)


def rate_limit_storm(run: Run) -> None:
    """Ten 429 answers in a row, each with Retry-After."""
    run.server.fail_next(10, status=429, headers={"Retry-After": "0.05"})
    run.emit(SPANS)
    run.settle(SPANS)


def request_too_large(run: Run) -> None:
    """Mixpanel takes at most 8 kB per request: every batch is split."""
    run.server.max_bytes = 8_000
    run.emit(SPANS)
    run.settle(SPANS)


def partial_refusal(run: Run) -> None:
    """Mixpanel refuses two events and their updates; the rest of each request is kept."""

    def rule(record: Dict[str, object]) -> Optional[str]:
        text = str(record)
        return "refused by a project rule" if any(f"'{n}'" in text for n in REFUSED) else None

    run.server.refuse_records(rule)
    run.emit(SPANS)
    run.settle(SPANS - len(REFUSED))


def slower_than_timeout(run: Run) -> None:
    """Two /import requests answered after the client gave up (applied late)."""
    run.server.fail_next(2, status=None, delay=TIMEOUT + 0.5, endpoint="/import")
    run.emit(SPANS // 2)
    time.sleep(POLICY.outage_pause + TIMEOUT)
    run.emit(SPANS // 2)
    run.settle(SPANS)


def connection_reset(run: Run) -> None:
    """Three requests cut off without an answer."""
    run.server.fail_next(3, drop_connection=True)
    run.emit(SPANS)
    run.settle(SPANS)


def restart_with_spool(run: Run) -> None:
    """Queued while Mixpanel is down, shut down, restarted with Mixpanel up."""
    run.server.stop()
    run.emit(SPANS)
    run.restart()
    run.server.start()
    run.settle(SPANS)


SCENARIOS: Dict[str, Callable[[Run], None]] = {
    "outage, then recovery": outage_then_recovery,
    "429 storm (Retry-After)": rate_limit_storm,
    "413 on large batches": request_too_large,
    "partial 400 (2 records refused)": partial_refusal,
    "server slower than the timeout": slower_than_timeout,
    "connection reset mid-request": connection_reset,
    "restart while Mixpanel is down": restart_with_spool,
}


def run_scenario(name: str, spool: bool) -> Row:
    """Run one scenario against its own local Mixpanel."""
    with tempfile.TemporaryDirectory() as directory:
        server = LocalMixpanel(port=free_port()).start()
        try:
            run = Run(str(Path(directory) / "spool") if spool else None, server)
            SCENARIOS[name](run)
            return run.row(name)
        finally:
            server.stop()


def table(rows: List[Row]) -> str:
    lines = [
        "| scenario | spool | events offered | delivered | resent copies (deduplicated) "
        "| lost | refused by Mixpanel | updates applied once | applied twice | updates lost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {'on' if r.spool else 'off'} | {r.offered} | {r.delivered} "
            f"| {r.resent_copies} | {r.lost} | {r.refused} | {r.applied_once} "
            f"| {r.applied_twice} | {r.updates_lost} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="replace the table in this markdown file")
    args = parser.parse_args()
    rows = [run_scenario(name, spool) for name in SCENARIOS for spool in (True, False)]
    text = table(rows)
    print(text)
    if args.write is not None:
        begin, end = "<!-- fault-table -->", "<!-- /fault-table -->"
        document = args.write.read_text()
        head, rest = document.split(begin, 1)
        args.write.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    main()
