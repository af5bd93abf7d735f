"""Which RunPod ids a completion webhook may name: RunPod's own shapes pass, anything that could
steer a RunPod URL or forge a log line is refused (MalformedRunPodId), whether the body is
parsed whole or scanned chunk by chunk."""

import json
import uuid

import pytest

from devtools.endpoint.jobs import new_job_id
from orchestrator.webhook_scan import KEPT_BYTES, IdScan, MalformedRunPodId, checked_id_of

BIG = "A" * (3 * KEPT_BYTES)  # a base64 output: the body is scanned, not kept

RUNPODS = [
    "c80ffee4-f315-4e25-a146-0f3d98cf024b-u1",
    "sync-8a7b6c5d-1e2f-4a3b-9c8d-7e6f5a4b3c2d-u1",
    # The endpoint's own ids are random: named here so that every pytest-xdist worker collects
    # the same tests.
    pytest.param(new_job_id(sync=False), id="endpoint-async"),
    pytest.param(new_job_id(sync=True), id="endpoint-sync"),
    "rp-1",
    "x" * 100,
]
NOT_RUNPODS = [
    "../purge-queue",
    "a/b",
    "..",
    "a\nb",
    "a b",
    "a%2Fb",
    "x" * 101,
    "",
    "é",
    5,
    ["rp-1"],
]


def scanned(body: bytes, chunk: int = 4096) -> str | None:
    scan = IdScan()
    for start in range(0, len(body), chunk):
        scan.feed(body[start : start + chunk])
    return scan.checked_id()


@pytest.mark.parametrize("runpod_id", RUNPODS)
def test_runpods_ids_pass_parsed_or_scanned(runpod_id):
    assert checked_id_of({"id": runpod_id}) == runpod_id
    small = json.dumps({"id": runpod_id, "status": "COMPLETED"}).encode()
    large = json.dumps({"id": runpod_id, "output": {"image": BIG}}).encode()
    assert scanned(small) == scanned(large) == runpod_id


@pytest.mark.parametrize("runpod_id", NOT_RUNPODS, ids=repr)
@pytest.mark.parametrize("where", ["first", "last"])
def test_any_other_id_is_refused_parsed_or_scanned(runpod_id, where):
    with pytest.raises(MalformedRunPodId):
        checked_id_of({"id": runpod_id})
    items = [("id", runpod_id), ("output", {"image": BIG})]
    for body in (dict(items[:1]), dict(items if where == "first" else items[::-1])):
        with pytest.raises(MalformedRunPodId):
            scanned(json.dumps(body).encode())


def test_a_body_naming_no_id_is_not_refused():
    assert checked_id_of({"status": "COMPLETED"}) is None
    assert checked_id_of({"id": None}) is None
    assert scanned(json.dumps({"output": {"image": BIG}}).encode()) is None


def test_an_id_cut_off_at_the_kept_head_cannot_be_told_rather_than_refused():
    pad = KEPT_BYTES - len(b'{"pad": "", "id": "') - 5
    body = json.dumps({"pad": "p" * pad, "id": str(uuid.uuid4()), "output": BIG}).encode()
    assert scanned(body) is None
