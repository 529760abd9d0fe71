"""Pictures made for display only: the denoising-trajectory strip and same-region zoomed crops.

Nothing here touches the codec; it only arranges images the codec and the baselines produced.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

HIGHLIGHT = (234, 88, 12)  # orange, the Space's accent colour
LABEL_H = 22


def trajectory_strip(frames: list[tuple[int, Image.Image]], tile_h: int = 160) -> Image.Image:
    """Side-by-side x0 predictions, one per denoising step, labelled "t=..." (the paper's Fig. 4).

    The first frame is the decoder's starting point, the timestep t the encoder predicted and
    transmitted; it gets an orange frame and the label "t=... (predicted)".
    """
    if not frames:
        raise ValueError("no denoising steps to show")
    tiles = []
    for i, (t, image) in enumerate(frames):
        scale = tile_h / image.height
        tile = image.convert("RGB").resize((max(1, round(image.width * scale)), tile_h), Image.LANCZOS)
        label = f"t={int(t)} (predicted)" if i == 0 else f"t={int(t)}"
        tiles.append(_labelled(tile, label, highlight=i == 0))
    gap = 6
    width = sum(tile.width for tile in tiles) + gap * (len(tiles) - 1)
    strip = Image.new("RGB", (width, tiles[0].height), "white")
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + gap
    return strip


def _labelled(tile: Image.Image, label: str, highlight: bool) -> Image.Image:
    border = 4 if highlight else 0
    out = Image.new("RGB", (tile.width + 2 * border, tile.height + 2 * border + LABEL_H), "white")
    if highlight:
        ImageDraw.Draw(out).rectangle([0, 0, out.width - 1, tile.height + 2 * border - 1], fill=HIGHLIGHT)
    out.paste(tile, (border, border))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=14)
    colour = HIGHLIGHT if highlight else (40, 40, 40)
    draw.text((out.width // 2, tile.height + 2 * border + LABEL_H // 2), label, fill=colour, font=font, anchor="mm")
    return out


def crop_box(size: tuple[int, int], center_x: float, center_y: float, crop: int) -> tuple[int, int, int, int]:
    """The `crop` x `crop` box (clamped inside the image) centred at fractions (center_x, center_y)."""
    width, height = size
    side_w, side_h = min(crop, width), min(crop, height)
    left = round(center_x * width - side_w / 2)
    top = round(center_y * height - side_h / 2)
    left = min(max(left, 0), width - side_w)
    top = min(max(top, 0), height - side_h)
    return left, top, left + side_w, top + side_h


def zoomed_crop(image: Image.Image, box: tuple[int, int, int, int], zoom: int = 3) -> Image.Image:
    """The region `box`, enlarged `zoom` times with nearest-neighbour so the codec's pixels stay visible."""
    region = image.crop(box)
    return region.resize((region.width * zoom, region.height * zoom), Image.NEAREST)


def mark_box(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A copy of `image` with the crop region outlined, to show where the crops come from."""
    out = image.convert("RGB").copy()
    width = max(2, round(max(image.size) / 256))
    ImageDraw.Draw(out).rectangle(box, outline=HIGHLIGHT, width=width)
    return out
