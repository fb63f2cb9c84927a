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


def test_flat_attributes_read_the_same_as_the_mappings() -> None:
    """Before SDK 1.33 log records cannot hold mappings: the flat spelling of
    each tag gives the same fields, and a mapping inside a value keeps its data
    as JSON text."""
    from otel_mixpanel._convention._translate import parse  # noqa: PLC0415
    from otel_mixpanel._stats import Stats  # noqa: PLC0415

    tags = {
        "mixpanel_event": "Paid",
        "mixpanel.properties": {"plan": "pro", "seats": 3},
        "mixpanel_people_set": {"$email": "a@example.com"},
        "mixpanel_group": {"key": "company", "id": "acme", "set": {"tier": "gold"}},
        "mixpanel.user_id": "u1",
    }
    flat = c.flat_attributes(tags)
    assert not any(isinstance(value, dict) for value in flat.values())
    assert parse(flat, Stats()) == parse(tags, Stats())
    nested = c.flat_attributes({"mixpanel.properties": {"address": {"city": "Oslo"}}})
    assert nested == {"mixpanel.properties.address": '{"city":"Oslo"}'}
    assert c.flat_attributes({"mixpanel_unknown": {"a": 1}}) == {"mixpanel_unknown": {"a": 1}}
