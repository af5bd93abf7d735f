"""The orchestrator's pure decisions: payload, metadata, poll intervals, backoff, titles."""

import bisect
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handler.errors import InvalidInput
from orchestrator.payload import build_submission, validate
from orchestrator.policy import (
    FALLBACK_TITLE,
    backoff_s,
    clean_title,
    has_hangul,
    poll_interval_s,
    window_bucket,
)
from orchestrator.runpod import RUN_PER_10S, STATUS_PER_10S, endpoint_budget
from orchestrator.storage import output_path

# Fixed ids: the parametrized tests are named by them, and every pytest-xdist worker
# must collect the same tests.
USER, WORK = "5b0e7a1c-2f4d-4c8e-9a6b-3d1f0e2c4b5a", "9c3d2e1f-7a6b-4e5d-8c9b-0a1f2e3d4c5b"
RUNPOD_RUN_LIMIT, RUNPOD_STATUS_LIMIT = 1000, 2000  # per endpoint per 10 s (RunPod's docs)


def test_submission_carries_the_translated_prompt_and_the_drawn_seed():
    params = validate(
        {"prompt": "배경을 바꿔", "image_url": "https://x.org/a.png"}, USER, WORK, lambda: 99
    )
    when = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
    submission = build_submission(params, "Change the background", "llm", when)
    assert submission.input == {
        "prompt": "Change the background",
        "image_url": "https://x.org/a.png",
        "seed": 99,
        "steps": 4,
        "cfg": 1.0,
        "megapixels": 1.0,
    }
    assert submission.metadata == {
        "prompt": "Change the background",
        "original_prompt": "배경을 바꿔",
        "model": "XiCON_KLEIN_I2I",
        "width": None,
        "height": None,
        "seed": 99,
        "steps": 4,
        "cfg": 1.0,
        "megapixels": 1.0,
        "has_image_input": True,
        "submitted_at": "2026-11-27T05:00:00Z",
        "translation": "llm",
    }


def test_base64_images_are_sent_as_base64():
    params = validate({"prompt": "p", "image_base64": "AAAA"}, USER, WORK)
    submission = build_submission(params, "p", "skipped", datetime.now(UTC))
    assert submission.input["image_base64"] == "AAAA"
    assert "image_url" not in submission.input


@pytest.mark.parametrize(("user_id", "work_id"), [(None, WORK), ("x", WORK), (USER, "../etc")])
def test_ids_that_are_not_uuids_fail_before_any_gpu_time(user_id, work_id):
    with pytest.raises(InvalidInput, match="must be a UUID"):
        validate({"prompt": "p", "image_url": "https://x.org/a.png"}, user_id, work_id)


def test_storage_path_is_built_from_normalised_uuids():
    assert output_path(USER.upper(), WORK) == f"{USER}/{WORK}/output.png"


def test_each_job_polls_at_the_minimum_interval_until_the_budget_is_shared():
    assert poll_interval_s(0.5, awaiting=1, status_per_s=162) == 0.5
    assert poll_interval_s(0.5, awaiting=81, status_per_s=162) == 0.5  # exactly the budget
    assert poll_interval_s(0.5, awaiting=100, status_per_s=162) == pytest.approx(0.617, abs=1e-3)
    assert poll_interval_s(0.5, awaiting=1000, status_per_s=162) == pytest.approx(6.17, abs=1e-2)


@given(st.integers(1, 100_000), st.floats(0.01, 60))
def test_the_jobs_awaiting_never_poll_faster_than_the_budget_together(awaiting, min_s):
    per_s = 162.0
    assert awaiting / poll_interval_s(min_s, awaiting, per_s) <= per_s * (1 + 1e-9)


@given(st.integers(min_value=1, max_value=50), st.floats(min_value=0, max_value=1000) | st.none())
def test_backoff_is_capped_and_honours_retry_after(attempt, retry_after):
    delay = backoff_s(attempt, base_s=1, cap_s=60, retry_after_s=retry_after, jitter=0.1)
    assert 1 <= delay <= 66
    if retry_after is not None:
        assert delay >= min(60, retry_after)


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ('"해변의 노을"', "해변의 노을"),
        ("제목: 바다 위의 배.", "바다 위의 배"),
        ("「겨울 숲」\n설명이 이어집니다", "겨울 숲"),
        ("아주아주아주아주긴제목입니다", "아주아주아주아주긴제"),
        ("", FALLBACK_TITLE),
        (None, FALLBACK_TITLE),
        ("...", FALLBACK_TITLE),
    ],
)
def test_titles_are_cleaned_like_the_seed(answer, title):
    assert clean_title(answer) == title


@given(st.text())
def test_any_answer_gives_a_title_of_at_most_ten_characters(answer):
    title = clean_title(answer)
    assert 0 < len(title) <= 10
    assert "\n" not in title


def test_hangul_detection():
    assert has_hangul("배경을 해변으로 바꿔줘")
    assert has_hangul("make it 밝게")
    assert not has_hangul("Replace the sky")


def greedy_calls(capacity: float, refill_s: float, horizon_s: float, step_s: float) -> list[float]:
    """When calls go through a token bucket (aiolimiter's) that callers keep empty."""
    level, now, times = capacity, 0.0, []
    while now < horizon_s:
        level = min(capacity, level + step_s * capacity / refill_s)
        while level >= 1:
            level -= 1
            times.append(now)
        now += step_s
    return times


@pytest.mark.parametrize(("budget", "share"), [(2000, 0.1), (1800, 0.1), (900, 0.5), (1000, 0.9)])
def test_a_window_bucket_never_lets_more_than_the_budget_through_in_any_window(budget, share):
    capacity, refill_s = window_bucket(budget, 10, burst_share=share)
    assert capacity == pytest.approx(budget * share)  # what may go at once
    times = greedy_calls(capacity, refill_s, horizon_s=40, step_s=0.01)
    busiest = max(bisect.bisect_left(times, start + 10) - i for i, start in enumerate(times))
    assert budget * 0.98 <= busiest <= budget


@given(st.integers(min_value=1, max_value=100))
def test_replicas_calling_one_endpoint_keep_under_runpods_limits_together(replicas):
    run_per_10s, status_per_10s = endpoint_budget(replicas)
    assert replicas * run_per_10s <= RUNPOD_RUN_LIMIT
    assert replicas * status_per_10s <= RUNPOD_STATUS_LIMIT
    assert (run_per_10s, status_per_10s) >= (9, 18)  # each still gets its share
    assert endpoint_budget(1) == (RUN_PER_10S, STATUS_PER_10S)
