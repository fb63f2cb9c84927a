"""The table of keys: lookups and its agreement with the documentation."""

from __future__ import annotations

import re
from pathlib import Path

from otel_mixpanel._convention import _table as c


def test_every_key_is_once_in_the_table() -> None:
    """No key name and no structlog spelling repeats."""
    names = [key.name for key in c.KEYS]
    assert len(names) == len(set(names))
    assert len(c.BY_STRUCTLOG_NAME) == len(c.KEYS)


def test_lookup_plain_and_keyed() -> None:
    """Plain keys, keyed keys with dotted names, and unknown keys."""
    assert c.lookup("mixpanel.event") == (c.BY_NAME["mixpanel.event"], None)
    key, name = c.lookup("mixpanel.properties.plan.tier")
    assert key is c.BY_NAME["mixpanel.properties"] and name == "plan.tier"
    key, name = c.lookup("mixpanel.people.set_once.first_seen")
    assert key is c.BY_NAME["mixpanel.people.set_once"] and name == "first_seen"
    assert c.lookup("mixpanel.people.track_charge") == (
        c.BY_NAME["mixpanel.people.track_charge"], None,
    )
    assert c.lookup("mixpanel.nothing") == (None, None)
    assert c.lookup("mixpanel.properties.") == (None, None)


def test_structlog_spelling_is_a_fixed_table() -> None:
    """Underscored names map by table, so keys containing '_' stay whole."""
    assert c.BY_STRUCTLOG_NAME["mixpanel_identify_anon_id"].name == "mixpanel.identify.anon_id"
    assert c.BY_STRUCTLOG_NAME["mixpanel_people_set_once"].name == "mixpanel.people.set_once"


def test_docs_reference_lists_every_key() -> None:
    """The key tables of docs/attributes.md name each key of the code's table, and no other."""
    text = (Path(__file__).parents[1] / "docs" / "attributes.md").read_text()
    rows = re.findall(r"^\| `(mixpanel\.[a-z_.]+?)(?:\.<[a-z_]+>)?` \|", text, re.MULTILINE)
    assert set(rows) == set(c.BY_NAME)
