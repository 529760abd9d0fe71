"""Pictures made for display only: the denoising-trajectory strip and same-region zoomed crops.

Nothing here touches the codec; it only arranges images the codec and the baselines produced.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

HIGHLIGHT = (234, 88, 12)  # orange, the Space's accent colour
LABEL_H = 22
MAX_FRAMES = 12  # trajectory tiles shown, whatever the number of denoising steps
MAX_TILE_ASPECT = 4  # a tile is at most 4x as wide as it is high


def trajectory_strip(frames: list[tuple[int, Image.Image]], tile_h: int = 160) -> Image.Image:
    """Side-by-side x0 predictions, one per denoising step, labelled "t=..." (the paper's Fig. 4).

    The first frame is the decoder's starting point, the timestep t the encoder predicted and
    transmitted; it gets an orange frame and the label "t=... (predicted)" ("t=0 (predicted): no
    denoising" when the encoder chose to skip denoising, the strip's only frame).

    The strip's size is bounded whatever the frames are: at most MAX_FRAMES of them (the first,
    the last and evenly spaced ones between), each fitted inside a tile_h x (MAX_TILE_ASPECT *
    tile_h) box, so a 4096x1 image makes a 640x1 tile, not a 655,360x160 one.
    """
    if not frames:
        raise ValueError("no denoising steps to show")
    tiles = []
    for i, (t, image) in enumerate(_spread(frames, MAX_FRAMES)):
        scale = min(tile_h / image.height, MAX_TILE_ASPECT * tile_h / image.width)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        tile = image.convert("RGB").resize(size, Image.LANCZOS)
        label = f"t={int(t)}"
        if i == 0:
            label += " (predicted): no denoising" if t == 0 else " (predicted)"
        tiles.append(_labelled(tile, label, highlight=i == 0, height=tile_h))
    gap = 6
    width = sum(tile.width for tile in tiles) + gap * (len(tiles) - 1)
    strip = Image.new("RGB", (width, max(tile.height for tile in tiles)), "white")
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + gap
    return strip


def _spread(items: list, most: int) -> list:
    """At most `most` of `items`: the first, the last and evenly spaced ones between."""
    if len(items) <= most:
        return items
    step = (len(items) - 1) / (most - 1)
    return [items[round(i * step)] for i in range(most)]


def _labelled(tile: Image.Image, label: str, highlight: bool, height: int) -> Image.Image:
    """The tile (vertically centred in `height`) with its label below, wide enough for the label."""
    border = 4 if highlight else 0
    font = ImageFont.load_default(size=14)
    text_w = round(ImageDraw.Draw(tile).textlength(label, font=font)) + 4
    width = max(tile.width + 2 * border, text_w)
    out = Image.new("RGB", (width, height + 2 * border + LABEL_H), "white")
    left, top = (width - tile.width) // 2, (height - tile.height) // 2 + border
    if highlight:
        ImageDraw.Draw(out).rectangle([0, 0, width - 1, height + 2 * border - 1], fill=HIGHLIGHT)
    out.paste(tile, (left, top))
    draw = ImageDraw.Draw(out)
    colour = HIGHLIGHT if highlight else (40, 40, 40)
    draw.text((width // 2, height + 2 * border + LABEL_H // 2), label, fill=colour, font=font, anchor="mm")
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
