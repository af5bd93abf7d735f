"""The job input contract: defaults, ranges, exact sentences, and no input that crashes it."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handler.contract import (
    IMAGE_BASE64_MAX_CHARS,
    MISSING_IMAGE,
    MISSING_PROMPT,
    RANDOM_SEED_MAX,
    RUNPOD_RUN_MAX_BYTES,
    ImageBase64,
    ImageUrl,
    parse_input,
)
from handler.errors import InvalidInput

IMAGE = {"image_url": "https://example.com/a.png"}


def test_defaults_are_the_seed_workflows():
    params = parse_input({"prompt": "make it blue", **IMAGE}, draw_seed=lambda: 77)
    assert (params.steps, params.cfg, params.megapixels) == (4, 1.0, 1.0)
    assert params.seed == 77
    assert params.seed_was_random is True
    assert params.image == ImageUrl("https://example.com/a.png")


def test_given_values_are_kept():
    raw = {
        "prompt": " p ",
        "image_base64": "AAAA",
        "seed": 12345,
        "steps": 10,
        "cfg": 2,
        "megapixels": 1.5,
    }
    params = parse_input(raw)
    assert params.prompt == "p"
    assert params.image == ImageBase64("AAAA")
    assert (params.seed, params.steps, params.cfg, params.megapixels) == (12345, 10, 2.0, 1.5)
    assert params.seed_was_random is False


@pytest.mark.parametrize("seed", [0, -1, -999, None])
def test_zero_negative_or_missing_seed_draws_a_random_one(seed):
    params = parse_input({"prompt": "p", **IMAGE, "seed": seed}, draw_seed=lambda: 4242)
    assert params.seed == 4242
    assert params.seed_was_random


def test_image_url_wins_when_both_are_given():
    params = parse_input({"prompt": "p", "image_url": "http://x.org/i.png", "image_base64": "AAAA"})
    assert params.image == ImageUrl("http://x.org/i.png")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"prompt": "p"}, MISSING_IMAGE),
        ({"prompt": "p", "image_url": "", "image_base64": "  "}, MISSING_IMAGE),
        ({**IMAGE}, MISSING_PROMPT),
        ({"prompt": "   ", **IMAGE}, MISSING_PROMPT),
        (
            {"prompt": "x" * 2001, **IMAGE},
            "Invalid parameter: prompt must be at most 2000 characters",
        ),
        ({"prompt": "p", **IMAGE, "steps": 0}, "Invalid parameter: steps must be between 1 and 40"),
        (
            {"prompt": "p", **IMAGE, "steps": 41},
            "Invalid parameter: steps must be between 1 and 40",
        ),
        ({"prompt": "p", **IMAGE, "steps": 4.5}, "Invalid parameter: steps must be an integer"),
        ({"prompt": "p", **IMAGE, "steps": True}, "Invalid parameter: steps must be an integer"),
        ({"prompt": "p", **IMAGE, "steps": "many"}, "Invalid parameter: steps must be an integer"),
        ({"prompt": "p", **IMAGE, "cfg": 20.5}, "Invalid parameter: cfg must be between 0 and 20"),
        ({"prompt": "p", **IMAGE, "cfg": -0.1}, "Invalid parameter: cfg must be between 0 and 20"),
        (
            {"prompt": "p", **IMAGE, "cfg": float("nan")},
            "Invalid parameter: cfg must be a finite number",
        ),
        (
            {"prompt": "p", **IMAGE, "megapixels": 0.4},
            "Invalid parameter: megapixels must be between 0.5 and 2.0",
        ),
        (
            {"prompt": "p", **IMAGE, "megapixels": [1]},
            "Invalid parameter: megapixels must be a number",
        ),
        (
            {"prompt": "p", **IMAGE, "seed": 2**64},
            "Invalid parameter: seed must be at most 18446744073709551615",
        ),
        ({"prompt": 5, **IMAGE}, "Invalid parameter: prompt must be a string"),
        (
            {"prompt": "p", "image_url": "ftp://x.org/a.png"},
            "Invalid parameter: image_url must be an http(s) URL",
        ),
        (
            {"prompt": "p", "image_url": "https://x.org:99999/a.png"},
            "Invalid parameter: image_url must be an http(s) URL",
        ),
        (
            {"prompt": "p", "image_url": "not a url"},
            "Invalid parameter: image_url must be an http(s) URL",
        ),
        ("just text", "Invalid input: expected a JSON object"),
        ([{"prompt": "p"}], "Invalid input: expected a JSON object"),
    ],
)
def test_bad_input_gets_the_exact_sentence(raw, message):
    with pytest.raises(InvalidInput) as caught:
        parse_input(raw)
    assert str(caught.value) == message


def test_numeric_strings_are_accepted_like_the_seed_workflow_did():
    params = parse_input({"prompt": "p", **IMAGE, "steps": "8", "cfg": "1.5"})
    assert (params.steps, params.cfg) == (8, 1.5)


def test_unknown_fields_are_ignored():
    params = parse_input({"prompt": "p", **IMAGE, "trace_id": "abc", "work_id": 1})
    assert params.prompt == "p"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
fields = st.sampled_from(
    ["prompt", "image_url", "image_base64", "seed", "steps", "cfg", "megapixels", "x"]
)


@given(st.dictionaries(fields, json_values, max_size=8) | json_values)
def test_no_input_raises_anything_but_a_clear_error(raw):
    try:
        params = parse_input(raw, draw_seed=lambda: 1)
    except InvalidInput as exc:
        message = str(exc)
        assert message.startswith(
            ("Missing required parameter: ", "Invalid parameter: ", "Invalid input: ")
        )
        assert "\n" not in message
    else:
        assert 1 <= params.steps <= 40
        assert 0 <= params.cfg <= 20
        assert 0.5 <= params.megapixels <= 2.0
        assert 1 <= params.seed <= 2**64 - 1
        assert 0 < len(params.prompt) <= 2000


def test_random_seeds_are_positive_and_json_safe():
    seeds = [parse_input({"prompt": "p", **IMAGE}).seed for _ in range(200)]
    assert all(1 <= seed <= RANDOM_SEED_MAX for seed in seeds)
    assert len(set(seeds)) > 190


TOO_LARGE_FOR_RUNPOD = (
    "Invalid parameter: image_base64 is too large to send through RunPod (over 7.4 MB); "
    "send a smaller image or an image_url"
)


def test_an_inline_image_too_large_for_runpods_run_body_is_refused_with_what_to_do():
    """A 9.7 MB PNG once failed only at RunPod, with HTTP 413 on /run, after intake."""
    with pytest.raises(InvalidInput) as caught:
        parse_input({"prompt": "p", "image_base64": "A" * (IMAGE_BASE64_MAX_CHARS + 4)})
    assert str(caught.value) == TOO_LARGE_FOR_RUNPOD


def test_the_largest_accepted_input_still_fits_runpods_run_body():
    raw = {
        "prompt": "\ubc30\uacbd" * 1000,  # 2,000 Hangul characters: 12,000 bytes escaped
        "image_base64": "data:image/png;base64," + "A" * (IMAGE_BASE64_MAX_CHARS - 22),
        "seed": 2**64 - 1,
        "steps": 40,
        "cfg": 19.999999999,
        "megapixels": 1.999999999,
    }
    params = parse_input(raw)
    body = {"input": raw, "webhook": "https://orchestrator.example.com/runpod/webhook/" + "t" * 64}
    assert len(json.dumps(body).encode()) < RUNPOD_RUN_MAX_BYTES
    assert params.image == ImageBase64(raw["image_base64"])


def test_an_image_url_is_limited_in_length():
    with pytest.raises(InvalidInput, match="image_url must be at most 8192 characters"):
        parse_input({"prompt": "p", "image_url": "https://x.org/" + "a" * 8200})


url_texts = st.builds(
    lambda scheme, rest: scheme + rest,
    st.sampled_from(["http://", "https://", "HTTP://", "ftp://", ""]),
    st.text(max_size=40),
)


@given(url_texts, st.text(max_size=20))
def test_any_image_url_gives_params_or_a_clear_sentence(url, base64_text):
    try:
        params = parse_input({"prompt": "p", "image_url": url, "image_base64": base64_text})
    except InvalidInput as exc:
        message = str(exc)
    else:
        assert isinstance(params.image, ImageUrl | ImageBase64)
        return
    assert message.startswith(("Invalid parameter: image_url ", "Missing required parameter: "))
