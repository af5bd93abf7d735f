"""The dashboard's pure decisions: who may look, stage-duration arithmetic, and shaping rows
into what the page draws."""

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.dashboard.access import (
    Presented,
    cookie_value,
    is_loopback_client,
    names_this_machine,
    verdict,
)
from orchestrator.dashboard.snapshot import (
    clean_progress,
    clean_timings,
    plain,
    shape_queue,
    shape_throughput,
)
from orchestrator.timings import STAGES, StageClock, elapsed_ms, runpod_ms

TOKEN = "a-dashboard-token"


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.5", False),
        ("203.0.113.9", False),
        ("localhost", False),  # a peer address is never a name: a name here is not trusted
        ("", False),
        (None, False),
    ],
)
def test_loopback_clients(host, local):
    assert is_loopback_client(host) is local


def test_without_a_token_the_address_decides():
    assert verdict(Presented("127.0.0.1"), None).allowed
    refused = verdict(Presented("198.51.100.7", authorization=f"Bearer {TOKEN}"), None)
    assert (refused.status, refused.allowed) == (403, False)
    assert "DASHBOARD_TOKEN" in refused.message


@pytest.mark.parametrize(
    ("host_header", "ours"),
    [
        ("localhost", True),
        ("localhost:8080", True),
        ("LOCALHOST.:8080", True),
        ("dash.localhost:8080", True),
        ("127.0.0.1:8080", True),
        ("127.1.2.3", True),
        ("[::1]:8080", True),
        ("[::1]", True),
        ("attacker.example:8080", False),  # a rebound name: the page is the attacker's
        ("localhost.attacker.example", False),
        ("192.0.2.2:8080", False),
        ("[::1", False),
        ("", False),
    ],
)
def test_this_machines_names(host_header, ours):
    assert names_this_machine(host_header) is ours


@pytest.mark.parametrize(
    ("presented", "says"),
    [
        (Presented("127.0.0.1", host_header="rebound.example:8080"), "own names"),
        (Presented("127.0.0.1", host_header="localhost:8080", relayed=True), "proxy"),
    ],
)
def test_without_a_token_a_local_peer_must_name_this_machine_and_come_directly(presented, says):
    refused = verdict(presented, None)
    assert (refused.status, refused.allowed) == (403, False)
    assert says in refused.message
    assert "DASHBOARD_TOKEN" in refused.message
    assert verdict(Presented("127.0.0.1", host_header="localhost:8080"), None).allowed


def test_with_a_token_each_way_of_presenting_it():
    assert verdict(Presented("198.51.100.7", authorization=f"Bearer {TOKEN}"), TOKEN).allowed
    assert verdict(Presented("198.51.100.7", authorization=f"bearer {TOKEN}"), TOKEN).allowed
    by_query = verdict(Presented("198.51.100.7", query_token=TOKEN), TOKEN)
    assert by_query.allowed
    assert by_query.set_cookie
    by_cookie = verdict(Presented("198.51.100.7", cookie=cookie_value(TOKEN)), TOKEN)
    assert by_cookie.allowed
    assert not by_cookie.set_cookie


@pytest.mark.parametrize(
    "presented",
    [
        Presented("127.0.0.1"),  # this machine too needs the token once it is set
        Presented("127.0.0.1", authorization=TOKEN),
        Presented("127.0.0.1", authorization=f"Bearer {TOKEN}x"),
        Presented("127.0.0.1", query_token=""),
        Presented("127.0.0.1", cookie=TOKEN),  # the cookie holds a derived value, not the token
        Presented("127.0.0.1", cookie=cookie_value("another token")),
    ],
)
def test_with_a_token_anything_else_is_401(presented):
    refused = verdict(presented, TOKEN)
    assert refused.status == 401
    assert TOKEN not in refused.message


def test_the_cookie_value_does_not_reveal_the_token():
    assert TOKEN not in cookie_value(TOKEN)
    assert cookie_value(TOKEN) == cookie_value(TOKEN) != cookie_value(TOKEN + "!")


@given(st.floats(0, 1e6), st.floats(-10, 1e6))
def test_elapsed_ms_is_whole_and_never_negative(start, length):
    ms = elapsed_ms(start, start + length)
    assert isinstance(ms, int)
    assert abs(ms - max(0.0, length * 1000)) <= 1


def test_runpod_times_are_taken_only_when_they_are_numbers():
    assert runpod_ms(900, 2010.4) == {"runpod_queue": 900, "gpu": 2010}
    assert runpod_ms(None, None) == {}
    assert runpod_ms("900", True) == {}
    assert runpod_ms(-1, 5) == {"gpu": 5}
    # No measurement: a figure past any job's life, or none at all (bigint overflows too).
    assert runpod_ms(10**30, 1e30) == {}
    assert runpod_ms(float("nan"), float("inf")) == {}
    assert runpod_ms(10**12, 0) == {"runpod_queue": 10**12, "gpu": 0}


def test_the_stage_clock_times_blocks_even_when_they_raise_and_forgets_what_it_gave():
    readings = iter([10.0, 10.25, 20.0, 20.5, 30.0, 31.0])
    clock = StageClock(lambda: next(readings))
    with clock.stage("translate"):
        pass
    with pytest.raises(RuntimeError), clock.stage("submit"):
        raise RuntimeError("the time was spent all the same")
    started = clock.now()
    clock.since("finalize", started)
    clock.add({"gpu": 7})
    assert clock.take() == {"translate": 250, "submit": 500, "finalize": 1000, "gpu": 7}
    assert clock.take() == {}


def test_timings_keep_the_known_stages_in_order():
    raw = {"gpu": 5, "claim": 1.0, "bogus": 3, "title": True, "store": "9", "finalize": 2}
    assert list(clean_timings(raw)) == ["claim", "gpu", "finalize"]
    assert clean_timings(raw) == {"claim": 1, "gpu": 5, "finalize": 2}
    assert clean_timings(None) == {}
    assert clean_timings([1, 2]) == {}
    assert set(STAGES) == {
        "claim",
        "translate",
        "submit",
        "runpod_queue",
        "gpu",
        "store",
        "title",
        "finalize",
    }


def test_progress_keeps_the_documented_keys():
    written = {"stage": "sampling", "node": "K", "step": 1, "steps": 4, "at": "t", "extra": 1}
    assert clean_progress(written) == {
        "stage": "sampling",
        "node": "K",
        "step": 1,
        "steps": 4,
        "at": "t",
    }
    assert clean_progress({"step": 1}) is None
    assert clean_progress("sampling") is None


def test_an_empty_queue_is_zeros_not_missing_keys():
    queue = shape_queue([])
    assert queue["pending"] == {"count": 0, "oldest_s": None, "delayed": 0}
    assert queue["processing"]["count"] == 0
    assert set(queue["by_age"].values()) == {0}


def test_throughput_per_minute_and_empty_hour():
    assert shape_throughput(None, 3600)["per_minute"] == 0
    hour = shape_throughput(
        {"completed": 90, "failed": 3, "cancelled": 0, "p50_s": 12.5, "p95_s": Decimal("40.25")},
        3600,
    )
    assert (hour["per_minute"], hour["p50_s"], hour["p95_s"]) == (1.5, 12.5, 40.25)


def test_times_are_utc_iso():
    seoul = timezone(timedelta(hours=9))
    assert plain(datetime(2026, 12, 3, 15, 0, tzinfo=seoul)) == "2026-12-03T06:00:00Z"
    assert plain(datetime(2026, 12, 3, 6, 0, tzinfo=UTC)) == "2026-12-03T06:00:00Z"
