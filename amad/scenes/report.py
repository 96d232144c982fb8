"""Measure how generated scenes (:mod:`amad.scenes.generator`) compare with the easy-VQA package's images.

    python -m amad.scenes.report --out docs/images/scenes_vs_easyvqa.png [--n 5000] [--refit 5000]

writes a labelled grid (2 rows of 8 package images over 2 rows of 8 generated ones) to ``--out`` and
the statistics of both sets as JSON to ``--stats`` (default: ``scenes_stats.json`` beside ``--out``):
background channels, per-shape areas / fills / anti-aliased edge pixels / border contact, shares of
every attribute value, the reader's agreement with the drawn attributes, the share of draws the
generator rejects, and (with ``--refit N``) how many of the first N package images the renderer
reproduces pixel for pixel from refitted parameters.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from amad.scenes import easyvqa_source as src
from amad.scenes.attributes import PALETTE, SHAPES, SIZES, ShapeAttributes, read_all
from amad.scenes.generator import (
    BACKGROUND_RANGE,
    CANVAS,
    SceneGenerator,
    SceneSpec,
    _draw_geometry,
    reader_safe,
    render_scene,
)

QUANTILES = (0, 5, 50, 95, 100)


def background_of(image: np.ndarray) -> tuple[int, int, int]:
    """The most common pixel value of a (64, 64, 3) uint8 image (the background: shapes cover < 1/4)."""
    flat = image.reshape(-1, 3).astype(np.int32)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    values, counts = np.unique(codes, return_counts=True)
    c = int(values[counts.argmax()])
    return c >> 16, (c >> 8) & 255, c & 255


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r + 1)² square (separable: rows, then columns; no wrap-around)."""
    h, w = mask.shape
    p = np.pad(mask, r)
    rows = np.zeros((h + 2 * r, w), dtype=bool)
    for d in range(2 * r + 1):
        rows |= p[:, d : d + w]
    out = np.zeros((h, w), dtype=bool)
    for d in range(2 * r + 1):
        out |= rows[d : d + h]
    return out


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {}
    return {f"p{q}": round(float(np.percentile(v, q)), 4) for q in QUANTILES}


def _shares(values: Sequence, keys: Sequence) -> dict[str, float]:
    c = Counter(values)
    n = max(len(values), 1)
    return {str(k): round(c[k] / n, 4) for k in keys}


def ks_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov–Smirnov distance (largest gap between the empirical CDFs)."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def ks_critical(n1: int, n2: int, alpha: float = 0.001) -> float:
    """Critical KS distance of two samples at level ``alpha`` (asymptotic: c(α)·sqrt((n1+n2)/(n1·n2)))."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n1 + n2) / (n1 * n2))


def per_image_measures(images: torch.Tensor, attrs: Sequence[ShapeAttributes]) -> list[dict]:
    """Per image: background, area (pixels), fill, edge pixels, border contact, exact-colour and
    uniform-background flags.

    Args:
        images: uint8 (N, 3, 64, 64).
        attrs: the reader's attributes of each image.
    """
    arr = images.permute(0, 2, 3, 1).numpy()
    out = []
    for img, a in zip(arr, attrs, strict=True):
        bg = np.array(background_of(img), dtype=np.int32)
        col = np.array(PALETTE[a.colour], dtype=np.int32)
        x = img.astype(np.int32)
        is_bg = (x == bg).all(-1)
        is_pure = (x == col).all(-1)
        shape_mask = ((x - col) ** 2).sum(-1) < ((x - bg) ** 2).sum(-1)
        non_bg = ~is_bg
        out.append(
            {
                "bg": bg.tolist(),
                "shape": a.shape,
                "area_px": a.area * img.shape[0] * img.shape[1],
                "fill": a.fill,
                "edge_px": int((non_bg & ~is_pure).sum()),
                "pure_px": int(is_pure.sum()),
                "touches_border": bool(
                    non_bg[0].any() or non_bg[-1].any() or non_bg[:, 0].any() or non_bg[:, -1].any()
                ),
                # every non-background pixel lies within 2 px of the shape: the background is one flat colour
                "uniform_bg": bool(not (non_bg & ~_dilate(shape_mask, 2)).any()),
            }
        )
    return out


def scene_statistics(images: torch.Tensor, attrs: Sequence[ShapeAttributes]) -> dict:
    """Summary statistics of a set of easy-VQA-style images (package or generated), as JSON-able dict."""
    m = per_image_measures(images, attrs)
    bgs = np.array([r["bg"] for r in m])
    stats: dict = {
        "n": len(m),
        "background": {
            "min": bgs.min(0).tolist(),
            "max": bgs.max(0).tolist(),
            "mean": bgs.mean(0).round(2).tolist(),
            "uniform_share": round(float(np.mean([r["uniform_bg"] for r in m])), 4),
        },
        "pure_colour_share": round(float(np.mean([r["pure_px"] > 0 for r in m])), 4),
        "shares": {
            "shape": _shares([a.shape for a in attrs], SHAPES),
            "colour": _shares([a.colour for a in attrs], list(PALETTE)),
            "size": _shares([a.size for a in attrs], SIZES),
            "row": _shares([a.row for a in attrs], (0, 1, 2)),
            "col": _shares([a.col for a in attrs], (0, 1, 2)),
        },
        "per_shape": {},
    }
    for s in SHAPES:
        rs = [r for r in m if r["shape"] == s]
        stats["per_shape"][s] = {
            "n": len(rs),
            "area_px": _quantiles([r["area_px"] for r in rs]),
            "fill": _quantiles([r["fill"] for r in rs]),
            "edge_px": _quantiles([r["edge_px"] for r in rs]),
            "touches_border_share": round(float(np.mean([r["touches_border"] for r in rs])), 4) if rs else None,
        }
    stats["_per_image"] = m  # dropped before writing; used for the KS distances
    return stats


def rejection_share(n: int = 20_000, seed: int = 12345) -> float:
    """Share of draws :func:`~amad.scenes.generator.sample_spec` rejects and redraws (see :func:`reader_safe`)."""
    rng = np.random.default_rng(seed)
    lo, hi = BACKGROUND_RANGE
    rejected = 0
    for _ in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(PALETTE)[int(rng.integers(len(PALETTE)))]
        bg = tuple(int(v) for v in rng.integers(lo, hi + 1, size=3))
        rejected += not reader_safe(SceneSpec(shape, colour, *_draw_geometry(rng, shape), background=bg))
    return rejected / n


def refit(image: torch.Tensor, attrs: ShapeAttributes, reach: int = 3) -> SceneSpec | None:
    """The :class:`~amad.scenes.generator.SceneSpec` that renders ``image`` exactly, searched around the
    canvas box read from its non-background pixels; ``None`` if no candidate within ``reach`` canvas
    pixels of that box renders it exactly.

    Args:
        image: uint8 (3, 64, 64) package image.
        attrs: its attributes (shape and colour are taken from them).
    """
    img = image.permute(1, 2, 0).numpy()
    bg = background_of(img)
    ys, xs = np.nonzero((img != np.array(bg, dtype=np.uint8)).any(-1))
    r0, r1, c0, c1 = (int(v) for v in (ys.min(), ys.max(), xs.min(), xs.max()))

    def near(centre: int) -> list[int]:
        return sorted(range(centre - reach, centre + reach + 1), key=lambda t: abs(t - centre))

    if attrs.shape == "rectangle":
        cands = (
            (x, y, x2 - x, y2 - y)
            for x in near(2 * c0)
            for x2 in near(2 * c1 + 1)
            for y in near(2 * r0)
            for y2 in near(2 * r1 + 1)
        )
    elif attrs.shape == "circle":
        cands = ((x, y, x2 - x, x2 - x) for x in near(2 * c0) for x2 in near(2 * c1 + 1) for y in near(2 * r0))
    else:  # the base is the bottom edge: y from the last row
        cands = ((x, y, x2 - x, x2 - x) for x in near(2 * c0) for x2 in near(2 * c1 + 1) for y in near(2 * r1 + 1))
    for x, y, w, h in cands:
        if w < 1 or h < 1:
            continue
        spec = SceneSpec(attrs.shape, attrs.colour, x, y, w, h, bg)
        if torch.equal(render_scene(spec), image):
            return spec
    return None


def refit_package(n: int) -> dict:
    """Refit the first ``n`` package images (train, then test) and summarise the fitted parameters."""
    images = torch.cat([src.load_images("train"), src.load_images("test")])[:n]
    attrs = read_all(images)
    exact, params = 0, {s: [] for s in SHAPES}
    for img, a in zip(images, attrs, strict=True):
        spec = refit(img, a)
        if spec is not None:
            exact += 1
            params[a.shape].append((spec.x, spec.y, spec.width, spec.height))
    summary = {"images": n, "exact": exact}
    for s, ps in params.items():
        if ps:
            p = np.array(ps)
            summary[s] = {"extent_min": int(p[:, 2:].min()), "extent_max": int(p[:, 2:].max())}
            if s == "triangle":  # base y between ceil(s·sin 60°) and the canvas side
                summary[s]["base_y_min_minus_height"] = int((p[:, 1] - np.ceil(p[:, 2] * math.sin(math.pi / 3))).min())
                summary[s]["base_y_max"] = int(p[:, 1].max())
            else:
                summary[s]["far_edge_max"] = int((p[:, :2] + p[:, 2:]).max())
    return summary


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def grid_image(top: torch.Tensor, top_attrs, bottom: torch.Tensor, bottom_attrs, top_title: str, bottom_title: str):
    """Two labelled blocks of images (each (16, 3, 64, 64): 2 rows of 8), tiles shown at 2 ×."""
    tile, cap, pad, head = 2 * 64, 26, 6, 24
    cols = 8
    block_h = head + 2 * (tile + cap + pad)
    width = cols * (tile + pad) + pad
    canvas = Image.new("RGB", (width, 2 * block_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    title_font, cap_font = _font(16), _font(11)
    for b, (imgs, attrs, title) in enumerate(((top, top_attrs, top_title), (bottom, bottom_attrs, bottom_title))):
        y0 = b * block_h + pad
        draw.text((pad, y0), title, fill=(0, 0, 0), font=title_font)
        for k in range(min(len(imgs), 2 * cols)):
            r, c = divmod(k, cols)
            x, y = pad + c * (tile + pad), y0 + head + r * (tile + cap + pad)
            im = Image.fromarray(imgs[k].permute(1, 2, 0).numpy()).resize((tile, tile), Image.NEAREST)
            canvas.paste(im, (x, y))
            a = attrs[k]
            draw.text((x, y + tile + 1), f"{a.size} {a.colour}", fill=(40, 40, 40), font=cap_font)
            draw.text((x, y + tile + 13), a.shape, fill=(40, 40, 40), font=cap_font)
    return canvas


def main(argv: Sequence[str] | None = None) -> dict:
    """Write the comparison grid and the statistics JSON; return the statistics."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/images/scenes_vs_easyvqa.png"))
    p.add_argument("--stats", type=Path, default=None, help="JSON path (default: scenes_stats.json beside --out)")
    p.add_argument("--n", type=int, default=5000, help="generated scenes to measure (default 5000, as the package)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refit", type=int, default=0, help="refit the first N package images (slow: ~0.1 s each)")
    args = p.parse_args(argv)
    t0 = time.time()

    pkg_images = torch.cat([src.load_images("train"), src.load_images("test")])
    pkg_attrs = read_all(pkg_images)
    gen = SceneGenerator(args.seed)
    items = [gen[i] for i in range(args.n)]
    gen_images = torch.stack([im for im, _ in items])
    drawn = [a for _, a in items]
    gen_attrs = read_all(gen_images)
    agree = sum(
        (d.shape, d.colour, d.size, d.row, d.col) == (r.shape, r.colour, r.size, r.row, r.col)
        for d, r in zip(drawn, gen_attrs, strict=True)
    )

    pkg, genst = scene_statistics(pkg_images, pkg_attrs), scene_statistics(gen_images, gen_attrs)
    ks = {}
    for s in SHAPES:
        a = [r["area_px"] for r in pkg["_per_image"] if r["shape"] == s]
        b = [r["area_px"] for r in genst["_per_image"] if r["shape"] == s]
        e1 = [r["edge_px"] for r in pkg["_per_image"] if r["shape"] == s]
        e2 = [r["edge_px"] for r in genst["_per_image"] if r["shape"] == s]
        ks[s] = {
            "area_px": round(ks_distance(a, b), 4),
            "edge_px": round(ks_distance(e1, e2), 4),
            "critical_0.001": round(ks_critical(len(a), len(b)), 4),
        }
    del pkg["_per_image"], genst["_per_image"]
    stats = {
        "command": f"python -m amad.scenes.report --out {args.out} --n {args.n} --seed {args.seed}"
        + (f" --refit {args.refit}" if args.refit else ""),
        "package": {"source": "easy-vqa train + test images", **pkg},
        "generated": {"source": f"SceneGenerator(seed={args.seed})[0:{args.n}]", **genst},
        "ks_package_vs_generated": ks,
        "reader_agreement": {"scenes": args.n, "agree": agree},
        "rejected_draw_share": round(rejection_share(), 4),
    }
    if args.refit:
        stats["refit"] = refit_package(args.refit)
    stats["canvas"] = CANVAS

    img = grid_image(
        pkg_images[:16],
        pkg_attrs[:16],
        gen_images[:16],
        drawn[:16],
        "easy-vqa package: train images 0-15 (labels: read from pixels)",
        f"generated: SceneGenerator(seed={args.seed})[0:16] (labels: drawn attributes)",
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    stats_path = args.stats or args.out.with_name("scenes_stats.json")
    stats_path.write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} and {stats_path} in {time.time() - t0:.0f} s")
    return stats


if __name__ == "__main__":
    main()
