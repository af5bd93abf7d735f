"""The sample photo the README submits is the one the project draws (no downloaded photo)."""

from PIL import Image

from tools.make_sample import OUT, SIZE, sample


def test_the_sample_photo_is_what_tools_make_sample_draws():
    with Image.open(OUT) as committed:
        assert committed.size == SIZE
        assert committed.convert("RGB").tobytes() == sample().tobytes()
