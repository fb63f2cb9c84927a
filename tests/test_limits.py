"""Mixpanel's client-side limits: a bad value never costs its event."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any, Dict

import pytest

from otel_mixpanel._model import Event, GroupUpdate, IdentityEvent, ProfileUpdate
from otel_mixpanel._queue._limits import DENYLISTED_DISTINCT_IDS, MAX_PROPERTIES, Limits
from otel_mixpanel._stats import Stats

NOW = 1_732_280_000.0
T0 = int(NOW * 1000)


def event(**properties: Any) -> Event:
    base: Dict[str, Any] = {"time": T0, "distinct_id": "u1", "$insert_id": "id-1"}
    base.update(properties)
    return Event("E", base)


def limit(message: Any, stats: Stats | None = None) -> Any:
    kept = Limits(stats or Stats(), clock=lambda: NOW).apply([message])
    return kept[0] if kept else None


class TestValues:
    def test_long_string_cut_to_255(self) -> None:
        """A 100 kB string is cut, counted, and the event kept."""
        stats = Stats()
        out = limit(event(big="x" * 100_000), stats)
        assert out.properties["big"] == "x" * 255
        assert stats.snapshot()["adjusted"] == {"string_truncated": 1}

    def test_multibyte_string_fits_255_bytes(self) -> None:
        """Cut by characters, then by bytes, never splitting a character."""
        out = limit(event(text="é" * 300))
        assert len(out.properties["text"].encode()) <= 255
        assert set(out.properties["text"]) == {"é"}

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
    def test_non_finite_numbers_dropped(self, bad: float) -> None:
        """JSON cannot carry NaN or infinity: that property goes, the event stays."""
        stats = Stats()
        out = limit(event(bad=bad, good=1.5), stats)
        assert "bad" not in out.properties and out.properties["good"] == 1.5
        assert stats.snapshot()["dropped"] == {"non_finite_number": 1}

    @pytest.mark.parametrize("count", [0, 10, 100, 250])
    def test_an_event_within_every_limit_passes_as_it_is(self, count: int) -> None:
        """Nothing to change: the very event goes on, with nothing counted."""
        stats = Stats()
        original = event(**{f"property_{i}": "v" if i % 2 else i for i in range(count)})
        assert limit(original, stats) is original
        assert stats.snapshot()["adjusted"] == {} and stats.snapshot()["dropped"] == {}

    def test_one_long_name_among_many_is_dropped(self) -> None:
        """Many short names and one of 256 characters: only that one goes."""
        stats = Stats()
        out = limit(event(**{f"p{i}": i for i in range(100)}, **{"n" * 256: 1}), stats)
        assert "n" * 256 not in out.properties and out.properties["p99"] == 99
        assert stats.snapshot()["dropped"] == {"property_name_too_long": 1}

    def test_too_many_properties(self) -> None:
        """400 properties become 254, the required ones kept."""
        stats = Stats()
        out = limit(event(**{f"p{i}": i for i in range(400)}), stats)
        assert len(out.properties) == MAX_PROPERTIES
        for required in ("time", "distinct_id", "$insert_id"):
            assert required in out.properties
        assert stats.snapshot()["dropped"]["too_many_properties"] == 403 - MAX_PROPERTIES

    def test_coercions(self) -> None:
        """Common Python values become what Mixpanel stores."""
        when = dt.datetime(2024, 1, 2, 3, 4, 5)
        out = limit(event(
            b=b"caf\xc3\xa9", d=dt.date(2024, 1, 2), t=when, dec=decimal.Decimal("1.5"),
            u=uuid.UUID(int=1), s={1}, tup=(1, 2),
        ))
        p = out.properties
        assert p["b"] == "café"
        assert p["d"] == "2024-01-02"
        assert p["t"] == "2024-01-02T03:04:05"
        assert p["dec"] == 1.5
        assert p["u"] == "00000000-0000-0000-0000-000000000001"
        assert p["s"] == [1] and p["tup"] == [1, 2]

    def test_unsupported_type_dropped(self) -> None:
        """An arbitrary object is not stringified (it may hold anything): dropped, counted."""
        stats = Stats()
        out = limit(event(obj=object()), stats)
        assert "obj" not in out.properties
        assert stats.snapshot()["dropped"] == {"unsupported_type": 1}

    def test_long_list_truncated(self) -> None:
        """Lists keep 254 items."""
        out = limit(event(items=list(range(1000))))
        assert out.properties["items"] == list(range(254))

    def test_nesting_limited_to_three_levels(self) -> None:
        """A fourth level of nesting is dropped, the rest kept."""
        stats = Stats()
        deep = {"l1": {"l2": {"l3": {"l4": 1}}, "ok": 1}}
        out = limit(event(deep=deep), stats)
        assert out.properties["deep"] == {"l1": {"l2": {}, "ok": 1}}
        assert stats.snapshot()["dropped"] == {"nested_too_deep": 1}

    def test_large_collection_dropped_on_event(self) -> None:
        """Lists over 8 KB on events are dropped; the same fits a profile (256 KB)."""
        big = ["y" * 200] * 100
        assert "big" not in limit(event(big=big)).properties
        update = limit(ProfileUpdate("u1", "$set", {"big": big}))
        assert update.value["big"] == big

    def test_long_property_name_dropped(self) -> None:
        """Names over 255 characters cannot be stored."""
        out = limit(event(**{"n" * 256: 1}))
        assert "n" * 256 not in out.properties


class TestEvents:
    @pytest.mark.parametrize("bad", [*sorted(DENYLISTED_DISTINCT_IDS), "NULL", " None "])
    def test_denylisted_distinct_id_becomes_anonymous(self, bad: str) -> None:
        """Mixpanel refuses these ids: the event is kept as anonymous, counted."""
        stats = Stats()
        out = limit(event(distinct_id=bad), stats)
        assert out.properties["distinct_id"] == ""
        assert stats.snapshot()["adjusted"] == {"denylisted_distinct_id": 1}

    def test_denylisted_identity_event_dropped(self) -> None:
        """An alias of 'null' would be harmful: dropped."""
        identity = IdentityEvent("$create_alias", {"time": T0, "distinct_id": "null",
                                                   "$insert_id": "x", "alias": "a"})
        assert limit(identity) is None

    def test_future_time_clamped(self) -> None:
        """More than an hour ahead (clock skew) becomes now, counted."""
        stats = Stats()
        out = limit(event(time=T0 + 2 * 3_600_000), stats)
        assert out.properties["time"] == T0
        assert stats.snapshot()["adjusted"] == {"time_in_future": 1}
        assert limit(event(time=T0 + 1000)).properties["time"] == T0 + 1000

    def test_time_before_1971_dropped(self) -> None:
        """Mixpanel cannot import it; dropped with its reason."""
        stats = Stats()
        assert limit(event(time=1000), stats) is None
        assert stats.snapshot()["dropped"] == {"time_before_1971": 1}


class TestUpdates:
    def test_denylisted_profile_dropped(self) -> None:
        """No profile update for an id Mixpanel refuses."""
        stats = Stats()
        assert limit(ProfileUpdate("undefined", "$set", {"a": 1}), stats) is None
        assert stats.snapshot()["dropped"] == {"denylisted_distinct_id": 1}

    def test_update_emptied_by_limits_is_dropped(self) -> None:
        """A $set whose only value was NaN sends nothing."""
        assert limit(GroupUpdate("company", "acme", "$set", {"x": float("nan")})) is None

    def test_unset_and_delete_pass(self) -> None:
        """Non-mapping operation values pass through, names cut to 255."""
        assert limit(ProfileUpdate("u", "$unset", ["a", "b" * 300])).value == ["a", "b" * 255]
        assert limit(ProfileUpdate("u", "$delete", "")).value == ""
