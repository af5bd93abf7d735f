"""The pure decisions behind the CLI: the progress line, which job a prefix names, why a job is
stuck, how loud the logs are, whether a result is the unedited input (no I/O but in-memory)."""

import io
import logging

import pytest
from PIL import Image, ImageDraw

from handler.contract.errors import InvalidInput
from orchestrator.__main__ import log_level
from orchestrator.console_ops import Cancelled, NotFound, cancel_line, pick, stuck_reason
from orchestrator.console_output import input_image, looks_unedited
from orchestrator.console_wait import CLEAR_LINE, progress_bar, render, wait_for

JOB = "11111111-2222-3333-4444-555555555555"


def row(work_status, job_status, progress=None, **extra):
    return {
        "job_id": JOB,
        "work_status": work_status,
        "job_status": job_status,
        "progress": progress,
        **extra,
    }


def progress(stage, step=None, steps=None, node=None):
    return {"stage": stage, "node": node, "step": step, "steps": steps, "at": "2026-12-03T06:40Z"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def follow(rows, tty):
    answers, clock, out = list(rows), Clock(), io.StringIO()

    def fetch():
        return answers.pop(0) if len(answers) > 1 else answers[0]

    result = wait_for(fetch, 60.0, out=out, clock=clock, sleep=clock.sleep, tty=tty)
    return result, out.getvalue()


def test_the_bar_shows_step_k_of_n_and_clamps_what_is_out_of_range():
    assert progress_bar(2, 4, width=8) == "[####----] 2/4"
    assert progress_bar(0, 4, width=4) == "[----] 0/4"
    assert progress_bar(9, 4, width=4) == "[####] 4/4"


def test_the_line_names_the_stage_and_node_and_draws_a_bar_only_when_steps_are_known():
    assert render(row("processing", "taken", progress("queued on RunPod"))) == (
        f"{JOB}  generating...  queued on RunPod"
    )
    line = render(row("processing", "taken", progress("sampling", 1, 4, "KSampler")))
    assert line == f"{JOB}  generating...  sampling (KSampler)  [#####---------------] 1/4"
    assert render(row("pending", "pending")) == f"{JOB}  queued"


def test_a_finished_job_ignores_stale_progress():
    done = row("failed", "failed", progress("sampling", 3, 4), error_message="boom")
    assert render(done) == f"{JOB}  failed  boom"


def test_off_a_terminal_each_change_is_one_line_and_repeats_are_not_printed():
    rows = [
        row("pending", "pending"),
        row("processing", "taken", progress("sampling", 1, 4)),
        row("processing", "taken", progress("sampling", 1, 4)),
        row("processing", "taken", progress("sampling", 2, 4)),
        row("completed", "completed", title="t", image_url="u"),
    ]
    result, text = follow(rows, tty=False)
    assert result["work_status"] == "completed"
    assert CLEAR_LINE not in text
    assert [line.split("  ", 1)[1] for line in text.splitlines()] == [
        "queued",
        "generating...  sampling  [#####---------------] 1/4",
        "generating...  sampling  [##########----------] 2/4",
        "done  't'  u",
    ]


def test_on_a_terminal_one_line_is_redrawn_and_left_standing_at_the_end():
    rows = [
        row("processing", "taken", progress("sampling", 1, 4)),
        row("processing", "taken", progress("sampling", 4, 4)),
        row("completed", "completed", title="t", image_url="u"),
    ]
    _, text = follow(rows, tty=True)
    assert text.count("\n") == 1
    assert text.endswith("\n")
    assert text.count(CLEAR_LINE) == 3
    first = text.split(CLEAR_LINE)[1]
    assert first == "11111111  generating...  sampling  [#####---------------] 1/4"
    assert text.rsplit(CLEAR_LINE, 1)[1] == f"{JOB}  done  't'  u\n"  # the whole id, at the end


def test_on_a_narrow_terminal_the_redrawn_line_is_cut_to_fit(monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    _, text = follow([row("processing", "taken", progress("sampling", 1, 4))], tty=True)
    assert text.split(CLEAR_LINE)[1].rstrip("\n") == "11111111  generating...  samp"


def matches(*pairs):
    return [{"job_id": j, "work_id": w, "job_matched": m} for j, w, m in pairs]


def test_a_prefix_naming_one_work_picks_the_matched_job_else_the_newest():
    rows = matches(("j2", "w", False), ("j1", "w", True))
    assert pick("j1", rows).job_id == "j1"
    assert pick("w", matches(("j2", "w", False), ("j1", "w", False))).job_id == "j2"


def test_a_prefix_naming_several_works_is_ambiguous_and_says_how_many():
    with pytest.raises(InvalidInput, match=r"^ab is ambiguous: it starts 3 jobs or works"):
        pick("ab", matches(("a1", "w1", True), ("a2", "w2", True), ("x", "ab3", False)))
    with pytest.raises(NotFound, match=r"^no job or work ab$"):
        pick("ab", [])


def candidate(status, **extra):
    base = {
        "status": status,
        "no_lease": False,
        "lease_expired_s": None,
        "locked_by": None,
        "last_error": None,
        "due_in_s": None,
        "age_s": 10.0,
    }
    return base | extra


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        (candidate("taken", no_lease=True), "taken with no lease (a row the n8n workflow left)"),
        (
            candidate("taken", lease_expired_s=42.0, locked_by="host-1"),
            "leased by host-1, whose lease expired 42 s ago (a dead process)",
        ),
        (
            candidate("pending", last_error="RunPod is out of credit (HTTP 402); add funds"),
            "waiting for an operator: RunPod is out of credit",
        ),
        (
            candidate("pending", last_error="RunPod answered HTTP 503 on run", due_in_s=20.0),
            "retrying in 20 s after: RunPod answered HTTP 503",
        ),
        (candidate("pending", age_s=1000.0), "pending for 1000 s (older than 900 s)"),
    ],
)
def test_each_stuck_job_gets_its_reason(job, reason):
    assert stuck_reason(job, 900.0).startswith(reason)


def test_a_young_job_due_now_is_not_stuck():
    assert stuck_reason(candidate("pending", last_error="x", due_in_s=-1.0), 900.0) is None


def test_one_shot_commands_log_warnings_unless_asked_and_services_log_what_they_do():
    assert log_level("status", 0, False) == logging.WARNING
    assert log_level("status", 1, False) == logging.INFO
    assert log_level("status", 0, True) == logging.ERROR
    assert log_level("serve", 0, False) == logging.INFO
    assert log_level("serve", 0, True) == logging.WARNING
    assert log_level("serve", 2, True) == logging.DEBUG


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawing() -> Image.Image:
    image = Image.new("RGB", (120, 80), (240, 240, 230))
    ImageDraw.Draw(image).ellipse((20, 10, 100, 70), fill=(200, 40, 40))
    return image


def test_a_scaled_copy_of_the_input_is_unedited_and_a_changed_image_is_not():
    source = drawing()
    assert looks_unedited(png(source), png(source.resize((180, 120), Image.Resampling.LANCZOS)))
    edited = source.copy()
    ImageDraw.Draw(edited).rectangle((0, 0, 60, 80), fill=(20, 90, 200))
    assert not looks_unedited(png(source), png(edited))
    assert not looks_unedited(b"not an image", png(source))


def test_the_input_image_is_read_back_from_image_base64_with_or_without_a_data_prefix():
    assert input_image({"image_base64": "data:image/png;base64,aGk="}) == b"hi"
    assert input_image({"image_url": "https://e.com/x.png"}) is None
    assert input_image({"image_base64": "%%%"}) is None


def cancelled(job_ended, runpod_job_id="rp-1", holder="host-2"):
    return Cancelled(
        work_id="W",
        job_id="J",
        work_cancelled=True,
        job_ended=job_ended,
        runpod_job_id=runpod_job_id,
        holder=holder,
        work_status="processing",
    )


@pytest.mark.parametrize(
    ("done", "problem", "line"),
    [
        (cancelled(True, None), None, "cancelled work W and its job J"),
        (cancelled(True), None, "cancelled work W and its job J; RunPod job rp-1 cancelled"),
        (
            cancelled(True),
            "could not be cancelled: RunPod answered HTTP 503 on cancel",
            "cancelled work W and its job J; RunPod job rp-1 could not be cancelled: "
            "RunPod answered HTTP 503 on cancel",
        ),
        (
            cancelled(False),
            "is not cancelled here: no RunPod endpoint is configured",
            "cancelled work W; host-2, which holds job J, stops it and RunPod job rp-1 "
            "within seconds",
        ),
        (
            cancelled(False, None),
            None,
            "cancelled work W; host-2, which holds job J, stops it within seconds",
        ),
    ],
)
def test_cancel_says_in_one_line_what_happened_to_each_row_and_the_runpod_job(done, problem, line):
    assert cancel_line(done, problem) == line
