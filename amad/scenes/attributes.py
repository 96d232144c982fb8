"""Read shape, colour, size and position of the single shape in an easy-VQA image from its pixels.

easy-VQA images are 64×64: a light background (every channel in 230..255) and one shape filled with
one of 8 pure colours, anti-aliased at the edges. The reader:

1. takes the background colour as the most common light pixel value;
2. picks the shape colour: the palette colour (:data:`PALETTE`) that most pixels lie within
   distance 60 of (pure shape pixels are exactly the palette value);
3. builds the shape mask: pixels nearer the shape colour than the background (the half-coverage
   line of the anti-aliased edge);
4. classifies the shape by how much of its bounding box the mask fills: rectangles ≈ 1.0, circles
   ≈ π/4 ≈ 0.79, triangles ≈ 0.5 (clipped by the image border, up to 0.66); cuts at 0.93 and 0.70;
5. size = mask area / image area, cut at :data:`SIZE_THRESHOLDS`; position = the mask centroid in a
   3 × 3 grid.

Checked against every shape and colour fact that the easy-VQA questions state (tests/data): all
5,000 images agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

#: Shape colours of easy-VQA (the generator's named colours), RGB.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}
SHAPES = ("circle", "rectangle", "triangle")
SIZES = ("small", "medium", "large")
#: Area fractions that separate small | medium | large (roughly the tertiles of the train images).
SIZE_THRESHOLDS = (0.055, 0.105)
#: Rows and columns of the 3 × 3 position grid.
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")

_PALETTE_ARR = np.array(list(PALETTE.values()), dtype=np.int32)  # (8, 3)
_RECT_FILL, _CIRCLE_FILL = 0.93, 0.70


@dataclass(frozen=True)
class ShapeAttributes:
    """What a caption says about one image.

    Attributes:
        shape: "circle" | "rectangle" | "triangle".
        colour: a key of :data:`PALETTE`.
        size: "small" | "medium" | "large".
        row: 0 top, 1 middle, 2 bottom (third of the image holding the centroid).
        col: 0 left, 1 center, 2 right.
        area: mask area / image area.
        fill: mask area / bounding-box area (the shape feature).
    """

    shape: str
    colour: str
    size: str
    row: int
    col: int
    area: float = 0.0
    fill: float = 0.0

    def transformed(self, rot90: int = 0, hflip: bool = False) -> ShapeAttributes:
        """Attributes of the image after ``torch.rot90(img, rot90, dims=(-2, -1))`` then an
        optional horizontal flip (``img.flip(-1)``). Only the position changes."""
        r, c = self.row, self.col
        for _ in range(rot90 % 4):  # counter-clockwise quarter turn: (r, c) -> (2 - c, r)
            r, c = 2 - c, r
        if hflip:
            c = 2 - c
        return replace(self, row=r, col=c)


def size_name(area: float) -> str:
    """Map an area fraction to "small" / "medium" / "large"."""
    lo, hi = SIZE_THRESHOLDS
    return "small" if area < lo else ("medium" if area < hi else "large")


def read_attributes(image: np.ndarray | torch.Tensor) -> ShapeAttributes:
    """Read the attributes of one easy-VQA image.

    Args:
        image: uint8 (H, W, 3) array or (3, H, W) tensor, RGB.

    Raises:
        ValueError: no shape pixels found (not an easy-VQA-style image).
    """
    if isinstance(image, torch.Tensor):
        image = image.permute(1, 2, 0).numpy()
    img = np.asarray(image, dtype=np.int32)
    h, w, _ = img.shape
    flat = img.reshape(-1, 3)

    light = flat.min(1) >= 200
    if not light.any():
        raise ValueError("no light background pixels: not an easy-VQA-style image")
    lf = flat[light]
    values, counts = np.unique((lf[:, 0] << 16) | (lf[:, 1] << 8) | lf[:, 2], return_counts=True)
    code = int(values[counts.argmax()])
    bg = np.array([code >> 16, (code >> 8) & 255, code & 255], dtype=np.int32)

    d_pal = ((flat[:, None, :] - _PALETTE_ARR[None]) ** 2).sum(-1)  # (P, 8)
    near = (d_pal < 60**2).sum(0)
    if near.max() == 0:
        raise ValueError("no pixel has a palette colour: not an easy-VQA-style image")
    k = int(near.argmax())
    colour = list(PALETTE)[k]

    d_bg = ((flat - bg) ** 2).sum(-1)
    mask = (d_pal[:, k] < d_bg).reshape(h, w)
    ys, xs = np.nonzero(mask)
    area = float(mask.sum())
    bbox = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = area / bbox
    shape = "rectangle" if fill >= _RECT_FILL else ("circle" if fill >= _CIRCLE_FILL else "triangle")

    frac = area / (h * w)
    row = min(int(3 * (ys.mean() + 0.5) / h), 2)
    col = min(int(3 * (xs.mean() + 0.5) / w), 2)
    return ShapeAttributes(shape, colour, size_name(frac), row, col, round(float(frac), 4), round(float(fill), 4))


def read_all(images: torch.Tensor) -> tuple[ShapeAttributes, ...]:
    """:func:`read_attributes` for each image of a uint8 (N, 3, H, W) tensor."""
    arr = images.permute(0, 2, 3, 1).numpy()
    return tuple(read_attributes(a) for a in arr)
