"""Write handler/test_input.json: a job with a small image drawn here (no downloaded photo)."""

import base64
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "handler" / "test_input.json"


def sample_image(width: int = 96, height: int = 64) -> bytes:
    """A sky-to-sand gradient with a red ball: enough structure to see an edit."""
    image = Image.new("RGB", (width, height))
    for y in range(height):
        t = y / (height - 1)
        color = (int(90 + 140 * t), int(160 + 40 * t), int(235 - 120 * t))
        ImageDraw.Draw(image).line([(0, y), (width, y)], fill=color)
    ImageDraw.Draw(image).ellipse([36, 20, 60, 44], fill=(210, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main() -> None:
    """Write the test job."""
    job = {
        "input": {
            "prompt": "Replace the background with a sandy beach at sunset",
            "image_base64": base64.b64encode(sample_image()).decode("ascii"),
            "seed": 42,
            "steps": 4,
            "cfg": 1.0,
            "megapixels": 0.5,
        }
    }
    OUT.write_text(json.dumps(job, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
