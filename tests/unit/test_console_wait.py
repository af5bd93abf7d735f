"""`klein submit --wait`'s follower, on a fake clock with scripted rows (no I/O, no sleeping)."""

import io

from orchestrator.console import describe
from orchestrator.console_wait import wait_for

JOB = "11111111-2222-3333-4444-555555555555"


class FakeClock:
    """A monotonic clock that only moves when the follower sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def row(work_status, job_status, **extra):
    return {"job_id": JOB, "work_status": work_status, "job_status": job_status, **extra}


def scripted(*rows):
    """A fetch returning the given rows in turn, then the last one forever; counts calls."""
    answers = list(rows)

    def fetch():
        fetch.calls += 1
        return answers.pop(0) if len(answers) > 1 else answers[0]

    fetch.calls = 0
    return fetch


def follow(fetch, timeout_s=10.0, interval_s=0.5):
    clock, out = FakeClock(), io.StringIO()
    result = wait_for(
        fetch, timeout_s, out=out, interval_s=interval_s, clock=clock, sleep=clock.sleep
    )
    return result, out.getvalue().splitlines(), clock


def test_each_change_of_state_is_printed_once_until_the_job_completes():
    done = row(
        "completed",
        "completed",
        title="해변",
        output_data_json={"image_url": "http://x/output.png"},
    )
    fetch = scripted(
        row("pending", "pending"),
        row("pending", "pending"),
        row("taken", "taken"),
        row("processing", "taken"),
        row("processing", "taken"),
        done,
    )
    result, lines, clock = follow(fetch)
    assert result == done
    assert lines == [
        f"{JOB}  queued",
        f"{JOB}  starting...",
        f"{JOB}  generating...",
        f"{JOB}  done  '해변'  http://x/output.png",
    ]
    assert fetch.calls == 6
    assert clock.sleeps == [0.5] * 5


def test_a_finished_work_whose_job_is_still_held_is_followed_until_both_end():
    fetch = scripted(
        row("completed", "taken"),
        row("completed", "taken"),
        row("completed", "completed", title="t", output_data_json={}),
    )
    result, lines, _ = follow(fetch)
    assert result["job_status"] == "completed"
    assert fetch.calls == 3
    assert len(lines) == 2  # the job's own change is a change of state too


def test_a_failure_is_printed_with_its_message_and_returned():
    failed = row("failed", "failed", error_message="Missing required parameter: image")
    result, lines, _ = follow(scripted(row("pending", "pending"), failed))
    assert result == failed
    assert lines[-1] == f"{JOB}  failed  Missing required parameter: image"


def test_it_gives_up_at_the_deadline_without_sleeping_past_it():
    pending = row("pending", "pending")
    fetch = scripted(pending)
    result, lines, clock = follow(fetch, timeout_s=2.0, interval_s=0.5)
    assert result == pending
    assert lines == [f"{JOB}  queued"]
    assert fetch.calls == 5  # at 0, 0.5, 1.0, 1.5 and 2.0 s
    assert clock.now == 102.0


def test_a_job_not_yet_visible_prints_nothing_and_returns_none_at_the_deadline():
    fetch = scripted(None)
    result, lines, clock = follow(fetch, timeout_s=1.0, interval_s=0.25)
    assert (result, lines) == (None, [])
    assert fetch.calls == 5
    assert clock.now == 101.0


def test_describe_falls_back_to_the_job_status_without_a_work_status():
    assert describe(row(None, "cancelled")) == f"{JOB}  cancelled"


def test_a_job_nobody_claims_gets_one_hint_that_klein_serve_may_not_be_running():
    fetch = scripted(row("pending", "pending"))
    clock, out = FakeClock(), io.StringIO()
    result = wait_for(fetch, 40.0, out=out, clock=clock, sleep=clock.sleep, hint_after_s=15.0)
    lines = out.getvalue().splitlines()
    assert result["work_status"] == "pending"
    assert lines[0] == f"{JOB}  queued"
    assert lines[1:] == [
        "  (still queued after 15 s: is `klein serve` running against this database?)"
    ]


def test_a_job_claimed_before_the_hint_is_due_gets_no_hint():
    done = row("completed", "completed", title="t", output_data_json={"image_url": "u"})
    fetch = scripted(row("pending", "pending"), row("taken", "taken"), done)
    _, lines, _ = follow(fetch)
    assert not any("still queued" in line for line in lines)
