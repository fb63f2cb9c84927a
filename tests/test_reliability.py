"""The fault suite over real HTTP: the scenarios of benchmarks/reliability.py,
whose table docs/reliability.md shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.reliability import REFUSED, SCENARIOS, run_scenario

NEEDS_NO_SPOOL = {
    "429 storm (Retry-After)", "413 on large batches", "partial 400 (2 records refused)",
    "connection reset mid-request",
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_with_spool_nothing_lost_nothing_applied_twice(name: str) -> None:
    """With the spool on, every record arrives once and every $add applies once."""
    row = run_scenario(name, spool=True)
    refused = len(REFUSED) if "partial" in name else 0
    assert row.refused == refused
    assert row.delivered == row.offered - refused
    assert row.lost == 0 and row.updates_lost == 0
    assert row.applied_once == row.updates_offered - refused
    assert row.applied_twice == 0


@pytest.mark.parametrize("name", sorted(NEEDS_NO_SPOOL))
def test_transient_faults_need_no_spool(name: str) -> None:
    """Retries alone carry 429s, 413s, partial refusals and resets."""
    row = run_scenario(name, spool=False)
    assert row.lost == 0 and row.updates_lost == 0 and row.applied_twice == 0


def test_without_spool_losses_are_never_doubles() -> None:
    """Without the spool an outage loses what falls in it, and never applies twice."""
    row = run_scenario("outage, then recovery", spool=False)
    assert row.lost > 0 and row.applied_twice == 0
    assert row.delivered + row.lost == row.offered


def test_docs_table_shows_zero_loss_with_spool() -> None:
    """docs/reliability.md's table has every scenario, and no loss or double
    application in any row where the spool is on."""
    text = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    rows = re.findall(r"^\| (.+?) \| (on|off) \|(.*)\|$", text, re.MULTILINE)
    assert {name for name, _, _ in rows} == set(SCENARIOS)
    for name, spool, rest in rows:
        cells = [int(cell) for cell in rest.split("|")]
        _offered, _delivered, _copies, lost, _refused, _once, twice, updates_lost = cells
        assert twice == 0, name
        if spool == "on":
            assert lost == 0 and updates_lost == 0, name
