"""Draws assets/examples/reference.png: a simple synthetic portrait used by the quick-start demo."""

from pathlib import Path

from PIL import Image, ImageDraw


def draw_reference(size: int = 128) -> Image.Image:
    s = size / 128
    image = Image.new("RGB", (size, size), (40, 110, 200))  # blue backdrop: visible if it leaks
    d = ImageDraw.Draw(image)

    def box(*xy: float) -> list[float]:
        return [v * s for v in xy]

    d.rectangle(box(24, 100, 104, 128), fill=(30, 160, 60))  # green shirt
    d.rectangle(box(54, 84, 74, 104), fill=(225, 180, 150))  # neck
    d.ellipse(box(38, 22, 90, 92), fill=(225, 180, 150))  # face
    d.chord(box(34, 14, 94, 60), 180, 360, fill=(70, 40, 20))  # hair
    for x in (50, 70):
        d.ellipse(box(x, 48, x + 8, 55), fill="white")
        d.ellipse(box(x + 2, 49, x + 6, 54), fill=(60, 90, 40))
    d.line(box(64, 56, 62, 68, 66, 68), fill=(170, 120, 100), width=max(1, round(s)))  # nose
    d.arc(box(54, 66, 74, 80), 20, 160, fill=(150, 50, 50), width=max(1, round(2 * s)))  # mouth
    return image


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "assets" / "examples" / "reference.png"
    draw_reference().save(out)
    print(out)
