"""Freshly generated easy-VQA scenes: unlimited, seeded, index-addressable, drawn as the package drew them.

The easy-VQA images (PyPI ``easy-vqa`` 1.0) were made by ``gen_data/images.py`` of
https://github.com/vzhou842/easy-VQA: a uniform light background, one shape drawn with PIL on a
128 × 128 canvas (2 × the image side, since PIL's draw methods do not anti-alias), then the canvas
is shrunk to 64 × 64 with ``Image.resize(..., BILINEAR)``. That shrink is the only anti-aliasing:
every output pixel is the (1, 3, 3, 1)/8 ⊗ (1, 3, 3, 1)/8 weighted mean of a 4 × 4 canvas patch,
so edge pixels are blends ``bg + (colour - bg) · k/64``. This module draws the same way:

* background: every channel uniform in 230..255 (``randint(230, 255)``), the same for every pixel;
* shape and colour: uniform over :data:`~amad.scenes.attributes.SHAPES` and the 8 colours of
  :data:`~amad.scenes.attributes.PALETTE`;
* extents on the canvas uniform in 16..64 (``IM_DRAW_SIZE / 8 .. IM_DRAW_SIZE / 2``):
  rectangles draw width and height independently (aspect 1/4..4), circles one diameter, triangles
  one side; rectangle and circle boxes lie inside the canvas; triangles are equilateral and upright
  (base at the bottom), the base's left end ``x`` in ``0..128 - s`` and its height ``y`` in
  ``ceil(s·sin 60°)..128``, so an apex can touch the top and a base the bottom border.
* circles: the package was drawn with Pillow < 8, whose filled ellipse was a 361-vertex polygon
  with integer vertices (one per degree, centre rounded down); newer Pillow draws ellipses
  differently, so :func:`render_scene` rebuilds that polygon (:func:`_legacy_ellipse_vertices`).

With this, the renderer reproduces package images **pixel for pixel** from their parameters
(checked on images of every shape: ``tests/data/test_data_scenes.py``; all 5,000 package images
were refitted exactly when this module was written, see docs/datasets.md).

Attributes of a generated scene are the **drawn** ones: shape and colour as drawn; size and position
of the drawn shape, i.e. of the canvas mask PIL fills (:func:`drawn_mask`), with the definitions of
:func:`~amad.scenes.attributes.read_attributes` (size = area fraction cut at
:data:`~amad.scenes.attributes.SIZE_THRESHOLDS`; row/col = the centroid's cell of a 3 × 3 grid,
pixel centres at ``k + 0.5``). The reader measures the same on the anti-aliased 64 × 64 image, with
the mask "nearer the shape colour than the background" (about half-covered); that mask loses or gains
edge pixels against the drawn shape (its area is 0.0023 smaller on average, -0.015..+0.014), and
exactly half-covered pixels go either way with Pillow's rounding of each colour channel. So
:func:`sample_spec` **rejects** a draw (and redraws its geometry) unless the reader's mask on the
rendered scene (:func:`rendered_measures`, with the drawn colour and background) gives the drawn size,
row, column and shape, with its area fraction at least :data:`AREA_MARGIN`, its centroid at least
:data:`CENTROID_MARGIN` pixels and its bounding-box fill at least :data:`FILL_MARGIN` from the cuts
(:func:`reader_safe`). Measured: 6.5 % of 20,000 draws are rejected (in 10,000 draws, 4.2 % differ in
size and 0.7 % in cell between drawn and read, the rest fall within a margin); in the kept scenes the
reader agrees on every attribute (tests/data/test_data_scenes.py checks 3,000 scenes, docs/datasets.md
5,000). The rejected
draws are those whose drawn area or centroid lies within a few edge pixels of a cut, so areas there are
slightly rarer than in the package (the distributions still pass a two-sample KS test against it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from amad.scenes.attributes import (
    _CIRCLE_FILL,
    _RECT_FILL,
    PALETTE,
    SHAPES,
    SIZE_THRESHOLDS,
    SIZES,
    ShapeAttributes,
    size_name,
)

#: Side of a generated image (pixels).
IMAGE_SIZE = 64
#: Supersampling factor: shapes are drawn on a ``CANVAS`` × ``CANVAS`` canvas, then shrunk.
SCALE = 2
CANVAS = IMAGE_SIZE * SCALE
#: Smallest and largest extent of a shape on the canvas (rectangle side, circle diameter, triangle side).
MIN_EXTENT, MAX_EXTENT = CANVAS // 8, CANVAS // 2
#: Range of every background channel (inclusive).
BACKGROUND_RANGE = (230, 255)
#: Margins of the rejection (see the module docstring): the reader's mask must give the drawn size, cell and
#: shape with its area fraction, centroid (image pixels) and bounding-box fill at least this far from the cuts.
AREA_MARGIN = 2 / IMAGE_SIZE**2
CENTROID_MARGIN = 0.05
FILL_MARGIN = 0.01

_SIN60 = math.sin(math.pi / 3)
# Pillow < 8 ellipse: one vertex per degree, angles 0..360 inclusive, cos/sin in single precision.
_DEG = np.arange(361, dtype=np.float64) * math.pi / 180
_COS = np.cos(_DEG).astype(np.float32)
_SIN = np.sin(_DEG).astype(np.float32)


@dataclass(frozen=True)
class SceneSpec:
    """One scene, in the easy-VQA generator's own parameters (canvas pixels, canvas = 128 × 128).

    Attributes:
        shape: "circle" | "rectangle" | "triangle".
        colour: a key of :data:`~amad.scenes.attributes.PALETTE`.
        x: rectangle / circle: left edge of the box; triangle: x of the base's left end.
        y: rectangle / circle: top edge of the box; triangle: y of the base (the bottom edge).
        width: rectangle: box width; circle: diameter; triangle: side. PIL boxes are inclusive, so a
            rectangle or circle covers ``width + 1`` canvas pixels across (as in the package).
        height: rectangle: box height; circle and triangle: equal to ``width``.
        background: RGB of the background, every channel in :data:`BACKGROUND_RANGE`.
    """

    shape: str
    colour: str
    x: int
    y: int
    width: int
    height: int
    background: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.colour not in PALETTE:
            raise ValueError(f"colour must be one of {tuple(PALETTE)}, got {self.colour!r}")
        if self.shape != "rectangle" and self.width != self.height:
            raise ValueError(f"a {self.shape} has width == height, got {self.width} != {self.height}")
        if min(self.width, self.height) < 1:
            raise ValueError(f"extents must be positive, got {self.width} × {self.height}")
        if len(self.background) != 3 or not all(0 <= int(v) <= 255 for v in self.background):
            raise ValueError(f"background must be 3 values in 0..255, got {self.background!r}")

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the bounding box as (x, y) in 64-px image pixels (triangle: of its box, not centroid)."""
        if self.shape == "triangle":
            return ((self.x + self.width / 2) / SCALE, (self.y - self.width * _SIN60 / 2) / SCALE)
        return ((self.x + self.width / 2) / SCALE, (self.y + self.height / 2) / SCALE)

    @property
    def aspect(self) -> float:
        """Width / height of the bounding box (rectangles 0.25..4; circles 1; triangles 1/sin 60°)."""
        if self.shape == "triangle":
            return 1 / _SIN60
        return self.width / self.height


def _legacy_round(v: np.ndarray, direction: np.ndarray) -> np.ndarray:
    # Pillow < 8 ``ellipsePoint``: round half-way values towards the centre, the rest to nearest.
    v64 = v.astype(np.float64)
    half = (v64 - np.floor(v64)) == 0.5
    towards_centre = np.where(direction > 0, np.floor(v64), np.ceil(v64))
    return np.where(half, towards_centre, np.floor(v64 + 0.5)).astype(np.int64)


def _legacy_ellipse_vertices(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Vertices of the filled ellipse Pillow < 8 drew in the box ``[(x0, y0), (x1, y1)]``.

    Pillow 8 replaced it with an exact scanline ellipse that covers other edge pixels; the package's
    circles match this polygon exactly (integer centre ``(x0 + x1) // 2``, float32 half-axes).
    """
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    xf = _COS * np.float32(w) / np.float32(2) + np.float32(cx)
    yf = _SIN * np.float32(h) / np.float32(2) + np.float32(cy)
    return list(zip(_legacy_round(xf, _COS).tolist(), _legacy_round(yf, _SIN).tolist(), strict=True))


def _draw(draw: ImageDraw.ImageDraw, spec: SceneSpec, ink) -> None:
    # The package's draw calls, with its float expressions (the triangle's vertices are not integral).
    x, y, w, h = spec.x, spec.y, spec.width, spec.height
    if spec.shape == "rectangle":
        draw.rectangle([(x, y), (x + w, y + h)], fill=ink)
    elif spec.shape == "circle":
        draw.polygon(_legacy_ellipse_vertices(x, y, x + w, y + w), fill=ink)
    else:
        s = w
        a1, a2 = 0.0, -math.pi / 3
        draw.polygon(
            [(x, y), (x + s * math.cos(a1), y + s * math.sin(a1)), (x + s * math.cos(a2), y + s * math.sin(a2))],
            fill=ink,
        )


def render_scene(spec: SceneSpec) -> torch.Tensor:
    """Draw one scene.

    Args:
        spec: what to draw.

    Returns:
        uint8 tensor (3, 64, 64), RGB.
    """
    im = Image.new("RGB", (CANVAS, CANVAS), tuple(int(v) for v in spec.background))
    _draw(ImageDraw.Draw(im), spec, PALETTE[spec.colour])
    im = im.resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.BILINEAR)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()


def drawn_mask(spec: SceneSpec) -> np.ndarray:
    """The canvas pixels the shape covers (what PIL draws before the shrink; off-canvas parts clipped).

    Returns:
        bool array (128, 128).
    """
    im = Image.new("L", (CANVAS, CANVAS), 0)
    _draw(ImageDraw.Draw(im), spec, 255)
    return np.asarray(im) > 0


@dataclass(frozen=True)
class MaskMeasures:
    """The quantities :func:`~amad.scenes.attributes.read_attributes` decides on, for one mask.

    Attributes:
        area: mask area / image area.
        fill: mask area / area of the mask's bounding box.
        cx: centroid column in image pixels (image pixel j spans [j, j + 1)).
        cy: centroid row in image pixels.
    """

    area: float
    fill: float
    cx: float
    cy: float

    @property
    def size(self) -> str:
        return size_name(self.area)

    @property
    def row(self) -> int:
        return _cell(self.cy)

    @property
    def col(self) -> int:
        return _cell(self.cx)

    @property
    def shape(self) -> str:
        return _shape_of_fill(self.fill)


def _cell(c: float) -> int:
    return min(int(3 * c / IMAGE_SIZE), 2)


def _shape_of_fill(fill: float) -> str:
    return "rectangle" if fill >= _RECT_FILL else ("circle" if fill >= _CIRCLE_FILL else "triangle")


def _measure(mask: np.ndarray, scale: int) -> MaskMeasures | None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    n = len(ys)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    # a mask pixel k has its centre at (k + 0.5) / scale image pixels, as the reader's ``k + 0.5``
    return MaskMeasures(
        n / mask.size, float(n / box), float((xs.mean() + 0.5) / scale), float((ys.mean() + 0.5) / scale)
    )


def drawn_measures(spec: SceneSpec) -> MaskMeasures:
    """Area, fill and centroid of the drawn shape (:func:`drawn_mask`, in image units).

    Raises:
        ValueError: the shape covers no canvas pixel.
    """
    m = _measure(drawn_mask(spec), SCALE)
    if m is None:
        raise ValueError(f"{spec} covers no pixel of the canvas")
    return m


def rendered_measures(spec: SceneSpec, image: torch.Tensor | None = None) -> MaskMeasures | None:
    """The same on the rendered image, with the reader's mask: pixels nearer the drawn colour than the
    drawn background (the half-coverage line of the anti-aliased edge). ``None`` when no pixel is.

    Args:
        spec: the scene.
        image: ``render_scene(spec)`` if already rendered.
    """
    img = (render_scene(spec) if image is None else image).permute(1, 2, 0).numpy().astype(np.int32)
    col = np.array(PALETTE[spec.colour], dtype=np.int32)
    bg = np.array(spec.background, dtype=np.int32)
    return _measure(((img - col) ** 2).sum(-1) < ((img - bg) ** 2).sum(-1), 1)


def _clear_of(v: float, cuts: tuple[float, ...], margin: float) -> bool:
    return all(abs(v - c) >= margin for c in cuts)


def _agrees(spec: SceneSpec, drawn: MaskMeasures, seen: MaskMeasures | None) -> bool:
    # the reader's mask gives the drawn size, cell and shape, each with a margin to its cuts
    lines = (IMAGE_SIZE / 3, 2 * IMAGE_SIZE / 3)
    return (
        seen is not None
        and (seen.size, seen.row, seen.col) == (drawn.size, drawn.row, drawn.col)
        and seen.shape == spec.shape
        and _clear_of(seen.area, SIZE_THRESHOLDS, AREA_MARGIN)
        and _clear_of(seen.cx, lines, CENTROID_MARGIN)
        and _clear_of(seen.cy, lines, CENTROID_MARGIN)
        and _clear_of(seen.fill, (_CIRCLE_FILL, _RECT_FILL), FILL_MARGIN)
    )


def _attributes(spec: SceneSpec, m: MaskMeasures) -> ShapeAttributes:
    return ShapeAttributes(spec.shape, spec.colour, m.size, m.row, m.col, round(m.area, 4), round(m.fill, 4))


def drawn_attributes(spec: SceneSpec) -> ShapeAttributes:
    """Attributes of a scene as drawn: shape and colour of ``spec``; size, row and column of the drawn
    shape (:func:`drawn_measures`) with the definitions of
    :func:`~amad.scenes.attributes.read_attributes`; ``area`` / ``fill`` of the drawn shape.

    Raises:
        ValueError: the shape covers no canvas pixel.
    """
    return _attributes(spec, drawn_measures(spec))


def reader_safe(spec: SceneSpec, image: torch.Tensor | None = None) -> bool:
    """True when the reader's mask on the rendered scene gives the drawn size, row, column and shape,
    each at least :data:`AREA_MARGIN` / :data:`CENTROID_MARGIN` / :data:`FILL_MARGIN` from its cuts.
    :func:`sample_spec` only returns such scenes."""
    drawn = _measure(drawn_mask(spec), SCALE)
    return drawn is not None and _agrees(spec, drawn, rendered_measures(spec, image))


def _draw_geometry(rng: np.random.Generator, shape: str) -> tuple[int, int, int, int]:
    # randint(a, b) of the package is inclusive: integers(a, b + 1)
    if shape == "rectangle":
        w, h = (int(v) for v in rng.integers(MIN_EXTENT, MAX_EXTENT + 1, size=2))
        return int(rng.integers(0, CANVAS - w + 1)), int(rng.integers(0, CANVAS - h + 1)), w, h
    d = int(rng.integers(MIN_EXTENT, MAX_EXTENT + 1))
    if shape == "circle":
        return int(rng.integers(0, CANVAS - d + 1)), int(rng.integers(0, CANVAS - d + 1)), d, d
    x = int(rng.integers(0, CANVAS - d + 1))
    y = int(rng.integers(math.ceil(d * _SIN60), CANVAS + 1))
    return x, y, d, d


def _pick(rng: np.random.Generator, given: str | None, choices: tuple[str, ...], what: str) -> str:
    if given is None:
        return choices[int(rng.integers(len(choices)))]
    if given not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {given!r}")
    return given


def _sample(
    rng: np.random.Generator,
    shape: str | None,
    colour: str | None,
    size: str | None,
    row: int | None,
    col: int | None,
    max_tries: int,
) -> tuple[SceneSpec, torch.Tensor, ShapeAttributes]:
    shape = _pick(rng, shape, SHAPES, "shape")
    colour = _pick(rng, colour, tuple(PALETTE), "colour")
    if size is not None and size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    for name, v in (("row", row), ("col", col)):
        if v is not None and v not in (0, 1, 2):
            raise ValueError(f"{name} must be 0, 1 or 2, got {v!r}")
    lo, hi = BACKGROUND_RANGE
    bg = tuple(int(v) for v in rng.integers(lo, hi + 1, size=3))
    for _ in range(max_tries):
        spec = SceneSpec(shape, colour, *_draw_geometry(rng, shape), background=bg)
        drawn = _measure(drawn_mask(spec), SCALE)
        if drawn is None:
            continue
        # conditions first: they need only the canvas mask, rendering costs more
        if (
            (size is not None and drawn.size != size)
            or (row is not None and drawn.row != row)
            or (col is not None and drawn.col != col)
        ):
            continue
        image = render_scene(spec)
        if _agrees(spec, drawn, rendered_measures(spec, image)):
            return spec, image, _attributes(spec, drawn)
    raise RuntimeError(f"no {size or ''} {colour} {shape} at row={row}, col={col} in {max_tries} draws")


def sample_scene(
    rng: np.random.Generator,
    *,
    shape: str | None = None,
    colour: str | None = None,
    size: str | None = None,
    row: int | None = None,
    col: int | None = None,
    max_tries: int = 100_000,
) -> tuple[SceneSpec, torch.Tensor, ShapeAttributes]:
    """:func:`sample_spec`, and the rendered image (uint8 (3, 64, 64)) and :func:`drawn_attributes`
    that sampling computed anyway."""
    return _sample(rng, shape, colour, size, row, col, max_tries)


def sample_spec(
    rng: np.random.Generator,
    *,
    shape: str | None = None,
    colour: str | None = None,
    size: str | None = None,
    row: int | None = None,
    col: int | None = None,
    max_tries: int = 100_000,
) -> SceneSpec:
    """Draw a scene from the package's distributions (see the module docstring).

    Shape, colour and background are drawn once (so shapes and colours stay exactly uniform); the
    geometry is redrawn while the scene is ambiguous for the reader (near a size threshold, a grid
    line or a shape cut). Optional conditions are met the same way, by redrawing the geometry, so a
    conditioned scene follows the package's distribution restricted to the condition.

    Args:
        rng: the random source (``numpy.random.default_rng(...)``).
        shape: draw this shape instead of a uniform one.
        colour: draw this colour instead of a uniform one.
        size: keep only geometries of this size ("small" | "medium" | "large").
        row: keep only centroids in this row (0 top .. 2 bottom).
        col: keep only centroids in this column (0 left .. 2 right).
        max_tries: geometry draws before giving up.

    Raises:
        ValueError: a condition names an unknown value.
        RuntimeError: no acceptable geometry in ``max_tries`` draws (the rarest combination, a large
            triangle in a corner, needs about 1,000 on average).
    """
    return _sample(rng, shape, colour, size, row, col, max_tries)[0]


class SceneGenerator(torch.utils.data.Dataset):
    """Unlimited seeded scenes: ``gen[i]`` is a pure function of ``(seed, i)``.

    Each index gets its own ``numpy.random.default_rng([seed, i])``, so DataLoader workers, shuffled
    orders and resumed runs see identical scenes for an index whatever was generated before.

    Args:
        seed: seed of the scene stream; different seeds give different scenes.
        length: ``len(gen)`` (indices ``0 .. length - 1``) for samplers that need a length;
            ``None`` (default): unlimited, ``len()`` raises ``TypeError``.

    ``gen[i]`` returns ``(image, attributes)``: uint8 (3, 64, 64) and the drawn
    :class:`~amad.scenes.attributes.ShapeAttributes`; :meth:`spec` gives the scene's
    :class:`SceneSpec`.
    """

    def __init__(self, seed: int = 0, length: int | None = None) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0 or None, got {length}")
        self.seed = int(seed)
        self.length = length

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an unlimited SceneGenerator has no len(); pass length=... for a sized one")
        return self.length

    def _check(self, i: int) -> int:
        i = int(i)
        if i < 0 or (self.length is not None and i >= self.length):
            raise IndexError(f"scene index {i} out of range (length {self.length})")
        return i

    def scene(self, i: int) -> tuple[SceneSpec, torch.Tensor, ShapeAttributes]:
        """Spec, image and drawn attributes of scene ``i``."""
        return sample_scene(np.random.default_rng([self.seed, self._check(i)]))

    def spec(self, i: int) -> SceneSpec:
        """The :class:`SceneSpec` of scene ``i``."""
        return self.scene(i)[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ShapeAttributes]:
        _, image, attrs = self.scene(i)
        return image, attrs

    def __repr__(self) -> str:
        return f"SceneGenerator(seed={self.seed}, length={self.length})"


def spec_from_mapping(d: Mapping) -> SceneSpec:
    """A :class:`SceneSpec` from a dict of its fields (e.g. read back from JSON)."""
    return SceneSpec(
        d["shape"], d["colour"], int(d["x"]), int(d["y"]), int(d["width"]), int(d["height"]), tuple(d["background"])
    )
