"""Write samples/portrait.png: a person in front of a brick wall, drawn here (no downloaded photo).

A background that an edit such as "배경을 해변으로 바꿔줘" (make the background a beach) visibly
changes, at about one megapixel. Run: `python tools/make_sample.py`.
"""

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "samples" / "portrait.png"
SIZE = (768, 1024)
BRICK = (150, 70, 50)
MORTAR = (200, 190, 175)
SKIN = (225, 180, 150)
HAIR = (50, 35, 30)
SHIRT = (40, 90, 160)


def brick_wall(draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """Rows of bricks, each row offset by half a brick."""
    draw.rectangle([0, 0, width, height], fill=MORTAR)
    brick_w, brick_h, gap = 96, 40, 6
    for row, y in enumerate(range(0, height, brick_h + gap)):
        offset = (brick_w // 2) * (row % 2)
        for x in range(-offset, width, brick_w + gap):
            shade = 12 * ((row * 7 + x // brick_w) % 3)
            color = (BRICK[0] + shade, BRICK[1] + shade // 2, BRICK[2])
            draw.rectangle([x, y, x + brick_w, y + brick_h], fill=color)


def person(draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """Shoulders, neck, head and hair, centred at the bottom."""
    cx = width // 2
    draw.ellipse([cx - 260, height - 330, cx + 260, height + 260], fill=SHIRT)
    draw.rectangle([cx - 45, height - 420, cx + 45, height - 300], fill=SKIN)
    draw.ellipse([cx - 130, height - 700, cx + 130, height - 380], fill=SKIN)
    draw.chord([cx - 140, height - 720, cx + 140, height - 480], 180, 360, fill=HAIR)
    for eye_x in (cx - 50, cx + 50):
        draw.ellipse([eye_x - 12, height - 575, eye_x + 12, height - 555], fill=HAIR)
    draw.arc([cx - 50, height - 530, cx + 50, height - 460], 20, 160, fill=(150, 60, 60), width=6)


def sample() -> Image.Image:
    """The whole picture."""
    image = Image.new("RGB", SIZE)
    draw = ImageDraw.Draw(image)
    brick_wall(draw, *SIZE)
    person(draw, *SIZE)
    return image


def main() -> None:
    """Write the sample."""
    OUT.parent.mkdir(exist_ok=True)
    sample().save(OUT, format="PNG", optimize=True)


if __name__ == "__main__":
    main()
