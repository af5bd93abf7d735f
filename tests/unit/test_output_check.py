"""ComfyUI's output: checked as a whole PNG (header, pixel cap, every chunk's CRC) without a
pixel decode, and its record taken from the `executed` message for our prompt and node."""

import io

import pytest
from PIL import Image

from handler.contract.errors import InvalidInput
from handler.contract.images import check_structure
from handler.errors import InvalidOutput
from handler.job import checked_output, saved_images


def encoded(image_format: str = "PNG", size: tuple[int, int] = (48, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format=image_format)
    return buffer.getvalue()


def test_an_intact_png_gives_its_size():
    data = encoded()
    found = check_structure(data)
    assert (found.format, found.width, found.height, found.data) == ("PNG", 48, 32, data)


@pytest.mark.parametrize(
    "broken",
    [
        lambda data: data[: len(data) - 20],  # cut before IEND
        lambda data: data[:60] + bytes([data[60] ^ 0xFF]) + data[61:],  # a flipped IDAT byte
        lambda data: b"not a png at all",
    ],
)
def test_a_truncated_or_corrupted_png_is_refused(broken):
    with pytest.raises(InvalidInput, match="not a readable image"):
        check_structure(broken(encoded()))


def test_the_pixel_cap_applies_to_the_header():
    with pytest.raises(InvalidInput, match="more than 1,000 pixels"):
        check_structure(encoded(size=(40, 30)), max_pixels=1000)


def test_checked_output_names_comfyui_in_its_errors():
    with pytest.raises(InvalidOutput, match="ComfyUI returned a JPEG file, not a PNG"):
        checked_output(encoded("JPEG"), 10_000)
    with pytest.raises(InvalidOutput, match="ComfyUI returned a file that is not a readable PNG"):
        checked_output(encoded()[:100], 10_000)


RECORD = {"filename": "klein_00001_.png", "subfolder": "klein", "type": "output"}


def executed(prompt_id: str = "p1", node: str = "9", output: object = None) -> dict:
    output = {"images": [RECORD]} if output is None else output
    data = {"node": node, "display_node": node, "output": output, "prompt_id": prompt_id}
    return {"type": "executed", "data": data}


def test_the_output_record_comes_from_our_prompts_executed_message():
    assert saved_images(executed(), "p1", "9") == [RECORD]


@pytest.mark.parametrize(
    "message",
    [
        executed(prompt_id="another"),
        executed(node="8"),
        executed(output={"text": ["no images"]}),
        {"type": "executing", "data": {"node": "9", "prompt_id": "p1"}},
        {"type": "executed", "data": "not a mapping"},
        ["not", "a", "message"],
    ],
)
def test_other_messages_give_no_record(message):
    assert saved_images(message, "p1", "9") == []
