"""The public spool functions, against the local Mixpanel."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from otel_mixpanel._spool import Spool
from otel_mixpanel.spool import replay_spool, spool_status
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import FAST, fill_spool


def test_status_then_replay_delivers_once(tmp_path: Path, mixpanel: LocalMixpanel) -> None:
    """spool_status tells what waits; replay_spool sends it once, with progress."""
    fill_spool(tmp_path, mixpanel, 30)
    status = spool_status(tmp_path)
    assert status.records == 60 and status.by_endpoint == {"/import": 30, "/engage": 30}
    assert status.oldest is not None
    with LocalMixpanel(token=mixpanel.token) as healthy:
        seen: List[Tuple[int, int]] = []
        result = replay_spool(tmp_path, token=healthy.token, api_host=healthy.url,
                              progress=lambda done, total: seen.append((done, total)))
        assert result.kept_records == 0 and result.error is None
        assert len(healthy.unique_events()) == 30
        assert healthy.profiles["u"] == {f"n{i}": 1 for i in range(30)}
        assert seen[-1] == (60, 60)
        # Running it again sends nothing more.
        again = replay_spool(tmp_path, token=healthy.token, api_host=healthy.url)
        assert again.done_records == 0 and len(healthy.profile_updates) == 30
    assert spool_status(tmp_path).records == 0


def test_replay_stops_while_mixpanel_is_down(tmp_path: Path, mixpanel: LocalMixpanel) -> None:
    """With Mixpanel still failing, replay keeps everything for later."""
    fill_spool(tmp_path, mixpanel, 5)
    result = replay_spool(tmp_path, token=mixpanel.token, api_host=mixpanel.url, timeout=0.2,
                          retry_policy=FAST)
    assert result.kept_records == 10
    assert spool_status(tmp_path).records == 10


def test_unknown_endpoint_in_the_spool_is_counted_not_blocking(
    tmp_path: Path, mixpanel: LocalMixpanel
) -> None:
    """A segment naming an endpoint we do not send to is dropped (counted) and
    the segments after it still replay."""
    spool = Spool(tmp_path)
    spool.write("/nowhere", [b'{"x":1}'])
    fill_spool(tmp_path, mixpanel, 3)
    with LocalMixpanel(token=mixpanel.token) as healthy:
        result = replay_spool(tmp_path, token=healthy.token, api_host=healthy.url)
        assert result.kept_records == 0
        assert len(healthy.unique_events()) == 3
