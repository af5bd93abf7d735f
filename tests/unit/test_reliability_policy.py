"""The pure decisions behind the reliability rules: what a RunPod webhook asks for, which
failures mean a sick worker, when a lost `/run` holds a resubmission back, how RunPod's answers
are classified, and what the stored output keeps of ComfyUI's PNG."""

import base64
import contextlib
import io
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from orchestrator.errors import NeedsOperator, Permanent, SubmissionUnknown, Transient
from orchestrator.jobs import ClaimedJob, WorkStatus
from orchestrator.output_image import (
    INVALID_OUTPUT,
    UNPACK_ON_LOOP_MAX_CHARS,
    prepare_output,
    strip_text_chunks,
    unpacks_on_loop,
)
from orchestrator.policy import (
    CallbackAction,
    callback_action,
    is_worker_fault,
    unrecorded_submission_wait_s,
)
from orchestrator.runpod import raise_for_status, transport_error
from orchestrator.settings import Settings


@pytest.mark.parametrize(
    ("recorded", "status", "given", "action"),
    [
        ("rp-1", "taken", "rp-1", CallbackAction.WAKE),
        ("rp-1", "taken", None, CallbackAction.WAKE),
        (None, "pending", "rp-9", CallbackAction.ADOPT),
        (None, "taken", "rp-9", CallbackAction.ADOPT),
        ("rp-1", "taken", "rp-9", CallbackAction.CANCEL),
        (None, "completed", "rp-9", CallbackAction.CANCEL),
        (None, "cancelled", "rp-9", CallbackAction.CANCEL),
    ],
)
def test_callback_action(recorded, status, given, action):
    assert callback_action(recorded, status, given) is action


@pytest.mark.parametrize(
    ("status", "error", "sick"),
    [
        ("FAILED", "ComfyUI is not reachable at http://127.0.0.1:8188; start ComfyUI", True),
        ("FAILED", "ComfyUI answered HTTP 500 on /prompt", True),
        ("FAILED", "Processing failed: VAELoader: Value not in list", False),
        ("FAILED", "Missing required parameter: image", False),
        ("FAILED", None, False),
        ("COMPLETED", "ComfyUI is not reachable", False),
    ],
)
def test_is_worker_fault(status, error, sick):
    assert is_worker_fault(status, error) is sick


def test_the_worker_faults_sentences_are_the_handlers_own():
    from handler.comfy import unreachable

    assert is_worker_fault("FAILED", unreachable("http://127.0.0.1:8188"))


def claimed(**fields) -> ClaimedJob:
    values = {
        "id": "j",
        "work_id": "w",
        "user_id": None,
        "input_data": {},
        "work_status": WorkStatus.TAKEN,
        "runpod_job_id": None,
        "submitted_at": None,
        "submit_started_at": None,
        "attempts": 0,
        "retries": 0,
        "abandoned": 0,
        "generation_metadata": None,
    }
    return ClaimedJob(**(values | fields))


NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
WEBHOOKS = Settings(public_base_url="https://klein.example", submission_unknown_wait_s=90)


def test_a_lost_run_holds_resubmission_back_until_its_webhook_could_have_come():
    job = claimed(submit_started_at=NOW - timedelta(seconds=30))
    assert unrecorded_submission_wait_s(job, WEBHOOKS, NOW.timestamp()) == pytest.approx(60)


@pytest.mark.parametrize(
    ("job", "settings"),
    [
        (claimed(submit_started_at=NOW - timedelta(seconds=91)), WEBHOOKS),
        (claimed(submit_started_at=NOW), Settings()),  # no webhooks: nothing would adopt it
        (claimed(), WEBHOOKS),  # no submission under way
        (claimed(submit_started_at=NOW, runpod_job_id="rp-1"), WEBHOOKS),  # recorded
    ],
)
def test_resubmission_is_not_held_back(job, settings):
    assert unrecorded_submission_wait_s(job, settings, NOW.timestamp()) == 0


def response(code: int) -> httpx.Response:
    return httpx.Response(code, request=httpx.Request("POST", "https://api.runpod.ai/v2/e/run"))


@pytest.mark.parametrize(
    ("code", "path", "kind", "says"),
    [
        (402, "/run", NeedsOperator, "out of credit"),
        (404, "/run", NeedsOperator, "RUNPOD_ENDPOINT_ID"),
        (401, "/status/x", NeedsOperator, "RUNPOD_API_KEY"),
        (403, "/run", NeedsOperator, "RUNPOD_API_KEY"),
        (429, "/run", Transient, "429"),
        (503, "/run", Transient, "503"),
        (400, "/run", Permanent, "400"),
    ],
)
def test_runpod_answers_are_classified(code, path, kind, says):
    with pytest.raises(kind, match=says) as caught:
        raise_for_status(response(code), path, "e")
    assert type(caught.value) is kind
    if isinstance(caught.value, NeedsOperator):
        assert caught.value.service == "runpod"


def test_a_lost_run_answer_is_uncertain_but_a_connection_never_made_is_not():
    request = httpx.Request("POST", "https://api.runpod.ai/v2/e/run")
    lost = transport_error(httpx.ReadTimeout("t", request=request), "/run")
    refused = transport_error(httpx.ConnectError("c", request=request), "/run")
    status = transport_error(httpx.ReadTimeout("t", request=request), "/status/x")
    assert isinstance(lost, SubmissionUnknown)
    assert type(refused) is Transient
    assert type(status) is Transient


def comfy_png(size=(64, 48)) -> bytes:
    info = PngInfo()
    info.add_text("prompt", '{"3": {"inputs": {"seed": 42, "text": "secret prompt"}}}')
    info.add_itxt("workflow", "{}")
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_the_stored_output_has_no_text_chunks_and_the_same_pixels():
    original = comfy_png()
    prepared = prepare_output({"image": base64.b64encode(original).decode(), "seed": 42})
    assert b"secret prompt" in original
    assert b"secret prompt" not in prepared.png
    assert b"tEXt" not in prepared.png
    assert b"iTXt" not in prepared.png
    with Image.open(io.BytesIO(prepared.png)) as stored, Image.open(io.BytesIO(original)) as made:
        assert stored.tobytes() == made.tobytes()
        assert stored.info.get("prompt") is None
    assert (prepared.width, prepared.height, prepared.seed) == (64, 48, 42)
    assert prepared.thumbnail_data_url.startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize(
    "output",
    [
        None,
        {},
        {"image": 7},
        {"image": "not base64!"},
        {"image": base64.b64encode(b"GIF89a....").decode()},
        {"image": base64.b64encode(comfy_png()[:60]).decode()},
    ],
)
def test_an_output_that_is_not_a_whole_png_is_invalid(output):
    with pytest.raises(Permanent, match=INVALID_OUTPUT):
        prepare_output(output)


@pytest.mark.parametrize(
    ("output", "on_loop"),
    [
        ({"image": "A" * UNPACK_ON_LOOP_MAX_CHARS}, True),
        ({"image": "A" * (UNPACK_ON_LOOP_MAX_CHARS + 4)}, False),
        ({"image": 7}, True),  # refused at once: nothing to decode
        ("not a mapping", True),
    ],
)
def test_only_an_output_of_usual_size_is_unpacked_on_the_event_loop(output, on_loop):
    assert unpacks_on_loop(output) is on_loop


def test_without_a_thumbnail_the_output_is_still_verified_and_measured():
    prepared = prepare_output({"image": base64.b64encode(comfy_png()).decode()}, thumbnail=False)
    assert (prepared.width, prepared.height, prepared.thumbnail_data_url) == (64, 48, None)
    assert b"tEXt" not in prepared.png


@pytest.mark.parametrize("mode", ["P", "L", "I;16", "LA", "1"])
def test_an_output_the_fast_proof_does_not_cover_is_judged_by_pillow(mode):
    buffer = io.BytesIO()
    Image.new(mode, (40, 30)).save(buffer, format="PNG")
    prepared = prepare_output(
        {"image": base64.b64encode(buffer.getvalue()).decode()}, thumbnail=False
    )
    assert (prepared.width, prepared.height) == (40, 30)


def noisy_png() -> bytes:
    """A small RGB PNG that compresses badly, so most of it is image data (and corruption
    lands in pixels, not only in headers); the same every time."""
    pixels = bytes((i * 7919 + i // 97) % 256 for i in range(48 * 32 * 3))
    buffer = io.BytesIO()
    Image.frombytes("RGB", (48, 32), pixels).save(buffer, format="PNG")
    return buffer.getvalue()


NOISY_PNG = noisy_png()


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.data())
def test_both_ways_of_verifying_accept_and_refuse_the_same_outputs(data):
    png = bytearray(NOISY_PNG)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(8, len(png) - 1))
        png[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del png[data.draw(st.integers(8, len(png) - 1)) :]
    output = {"image": base64.b64encode(bytes(png)).decode()}
    verdicts = []
    for thumbnail in (True, False):
        try:
            prepared = prepare_output(output, thumbnail=thumbnail)
        except Permanent:
            verdicts.append(None)
        else:
            verdicts.append((prepared.width, prepared.height, prepared.png))
    assert verdicts[0] == verdicts[1]


@given(st.binary(max_size=256))
def test_strip_text_chunks_never_raises_anything_but_permanent(tail):
    with contextlib.suppress(Permanent):
        strip_text_chunks(b"\x89PNG\r\n\x1a\n" + tail)


@pytest.mark.parametrize(
    ("configured", "from_url"),
    [
        ({}, False),  # local storage: its URLs are usually unreachable for the provider
        ({"supabase_url": "https://x.supabase.co"}, True),  # a public bucket, as n8n did
        ({"supabase_url": "https://x.supabase.co", "title_image": "thumbnail"}, False),
        ({"storage_backend": "local", "title_image": "url"}, True),
    ],
)
def test_the_title_model_sees_the_url_with_supabase_storage_unless_told(configured, from_url):
    assert Settings(**configured).titles_from_url is from_url
