"""A RunPod completion webhook's id, read from its body chunk by chunk without keeping it."""

import json

from orchestrator.webhook_scan import KEPT_BYTES, IdScan, runpod_id_from_body

BIG = "A" * (3 * KEPT_BYTES)  # base64 output, larger than what the scan keeps


def scanned(body: bytes, chunk: int) -> str | None:
    scan = IdScan()
    for start in range(0, len(body), chunk):
        scan.feed(body[start : start + chunk])
    return scan.runpod_id()


def webhook(*items: tuple[str, object]) -> bytes:
    return json.dumps(dict(items)).encode()


def test_the_id_of_a_large_body_is_found_wherever_it_stands_and_however_it_is_cut():
    before = webhook(("id", "sync-1a2b"), ("output", {"image": BIG, "prompt_id": "p"}))
    after = webhook(("output", {"image": BIG}), ("status", "COMPLETED"), ("id", "sync-1a2b"))
    for body in (before, after):
        for chunk in (1, 3, 5, 1000, 65536, len(body)):
            assert scanned(body, chunk) == "sync-1a2b", (chunk, body[:40])


def test_a_large_body_with_more_than_one_id_key_gives_no_id():
    body = webhook(("id", "a"), ("output", {"image": BIG, "id": "b"}))
    assert scanned(body, 4096) is None  # the job is still woken; its poll reads the status


def test_a_small_body_is_parsed_whole_as_before():
    assert scanned(webhook(("output", {"id": "inner"}), ("id", "outer")), 7) == "outer"
    assert scanned(b"not json", 3) is None
    assert scanned(webhook(("id", 5)), 3) is None
    assert runpod_id_from_body(webhook(("id", "x" * 201))) is None


def test_a_large_body_whose_id_is_not_a_plain_string_gives_no_id():
    body = webhook(("id", 'quo"ted'), ("output", {"image": BIG}))
    assert scanned(body, 4096) is None
