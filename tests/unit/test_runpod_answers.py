"""RunPod's answers (and completion webhook bodies, parsed the same way) are read as the status
object they should be: the keys the flow uses, as scalars, and nothing else built, so a body
shaped to blow up a generic parser costs no memory. RunPod is played at the HTTP level
(httpx.MockTransport), as in test_output_slots.py."""

import asyncio
import tracemalloc

import httpx
import msgspec
import pytest

from orchestrator.errors import Transient
from orchestrator.runpod import (
    UNREADABLE_OUTPUT,
    Progress,
    RunPodClient,
    RunPodJob,
    _decode_unusual,
    decode_answer,
    parse_status,
)

MiB = 1024 * 1024
WIDE = b"[" + b"[]," * (4 * MiB // 3) + b"[]]"  # 4 MiB: ~1.4 million lists if built


def status_of(body: bytes) -> tuple[RunPodJob, int]:
    """RunPodClient.status of a job whose `/status` answer is body: (the job, the most memory
    Python held above the body itself while reading and parsing it)."""

    async def run() -> RunPodJob:
        transport = httpx.MockTransport(lambda _request: httpx.Response(200, content=body))
        async with httpx.AsyncClient(transport=transport) as http:
            return await RunPodClient(http, "http://runpod/v2", "local", None).status("rp-1")

    tracemalloc.start()
    try:
        job = asyncio.run(run())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return job, peak


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "rp-1", "status": "COMPLETED", "output": {"image": "QUJD", "junk": %s}}' % WIDE,
        b'{"id": "rp-1", "status": "COMPLETED", "output": {"image": "QUJD"}, "junk": %s}' % WIDE,
    ],
    ids=["in-output", "beside-output"],
)
def test_wide_nesting_in_a_status_is_skipped_without_being_built(body):
    job, peak = status_of(body)
    assert (job.status, job.output) == ("COMPLETED", {"image": "QUJD"})
    # The body is held while read (chunks, then joined): a few copies of 4 MiB. Built as
    # Python lists it took over 80 MiB.
    assert peak < 4 * len(body)


def test_an_output_of_wide_nesting_is_unreadable_not_built():
    job, peak = status_of(b'{"id": "rp-1", "status": "COMPLETED", "output": %s}' % WIDE)
    assert job.output == UNREADABLE_OUTPUT  # the work fails as "RunPod returned an invalid image"
    assert peak < 4 * len(WIDE)


def test_a_status_that_is_no_object_is_refused_at_its_first_byte():
    with pytest.raises(Transient, match="unreadable answer on /status"):
        status_of(WIDE)


def test_a_status_keeps_the_keys_the_flow_reads_and_skips_the_rest():
    body = (
        b'{"id": "rp-1", "status": "COMPLETED", "delayTime": 12, "executionTime": 900,'
        b' "workerId": "w1", "output": {"image": "QUJD", "seed": 7, "prompt_id": "p",'
        b' "width": 96, "height": 64, "timings": {"comfy_s": 1.5}}}'
    )
    job, _ = status_of(body)
    assert (job.id, job.delay_time, job.execution_time) == ("rp-1", 12, 900)
    assert job.output == {"image": "QUJD", "seed": 7, "prompt_id": "p", "width": 96, "height": 64}


@pytest.mark.parametrize(
    ("error", "read"),
    [(b'"boom"', "boom"), (b'{"message": "boom"}', '{"message": "boom"}'), (b"null", None)],
)
def test_a_failed_status_keeps_its_error_as_text(error, read):
    job, _ = status_of(b'{"id": "rp-1", "status": "FAILED", "error": %s}' % error)
    assert (job.status, job.error) == ("FAILED", read)


def test_a_progress_report_of_an_odd_shape_shows_the_job_running():
    body = b'{"id": "rp-1", "status": "IN_PROGRESS", "output": {"stage": ["x"], "step": 1}}'
    job, _ = status_of(body)
    assert job.progress == Progress("running")


@pytest.mark.parametrize(
    ("error", "stored"),
    [
        ("ComfyUI is not reachable", "ComfyUI is not reachable"),
        ("line1\nFAKE INFO orchestrator: job forged", "line1 FAKE INFO orchestrator: job forged"),
        ("\x1b[31mred\u202eevil\x00", "\\x1b[31mred\\u202eevil\\x00"),
        ({"code": 5}, "{'code': 5}"),
        ("E" * 1_000_000, "E" * 1999 + "…"),
    ],
)
def test_a_failures_error_is_one_readable_line_of_bounded_size(error, stored):
    """RunPod's `error` becomes the work's error_message and a log line: the worker's text, or
    anyone's who learnt a job's webhook URL, so nothing in it acts on a log or a terminal."""
    job = parse_status("rp-1", {"id": "rp-1", "status": "FAILED", "error": error})
    assert job.error == stored


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "rp-1", "status": "COMPLETED", "output": {"image": "QUJD", "seed": 7}}',
        b'{"id": "rp-1", "status": "COMPLETED", "output": {}, "delayTime": 3, "executionTime": 2}',
        b'{"id": "rp-1", "status": "IN_PROGRESS", "output": {"stage": "sampling", "step": 3}}',
        b'{"id": "rp-1", "status": "COMPLETED", "output": null}',
        b'{"id": "rp-1", "status": "COMPLETED", "output": "just text"}',
        b'{"id": "rp-1", "status": "FAILED", "error": "boom", "output": 5}',
        b'{"id": 7, "status": null, "error": null, "workerId": "w", "retries": [1, {"a": 2}]}',
        b'{"id": "rp-1", "output": {"image": "QUJD", "image": "WFla"}}',
        b'{"id": "rp-1", "output": {"image": "QUJD", "seed": [1]}}',
        b'{"id": "rp-1", "status": "FAILED", "error": {"message": "boom"}}',
        b'{"id": "rp-1", "status": "COMPLETED", "output": [1, 2]}',
        b"{}",
    ],
)
def test_the_one_pass_reading_agrees_with_the_two_pass_one(body):
    """decode_answer reads the usual answer in one pass and falls back to reading `output` and
    `error` apart: on every body the two readings must give the same keys and values."""
    assert decode_answer(body) == _decode_unusual(body)


@pytest.mark.parametrize("body", [b"", b"[]", b'{"id": "rp-1"', b'{"id": {"x": 1}}', WIDE])
def test_an_answer_that_is_no_status_object_is_refused_by_both_readings_alike(body):
    with pytest.raises(msgspec.DecodeError) as one_pass:
        decode_answer(body)
    with pytest.raises(msgspec.DecodeError) as two_pass:
        _decode_unusual(body)
    assert str(one_pass.value) == str(two_pass.value)
