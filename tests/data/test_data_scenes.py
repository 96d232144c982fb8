"""Generated scenes: pixel-exact easy-VQA drawing, reader agreement on every scene, coverage of every attribute
combination, determinism, and statistics that match the package's images."""

import math
from dataclasses import replace
from itertools import product

import numpy as np
import pytest
import torch

from amad.scenes import easyvqa_source as src
from amad.scenes.attributes import PALETTE, SHAPES, SIZES, read_all, read_attributes
from amad.scenes.generator import (
    BACKGROUND_RANGE,
    MAX_EXTENT,
    MIN_EXTENT,
    SceneGenerator,
    SceneSpec,
    drawn_attributes,
    reader_safe,
    render_scene,
    sample_scene,
    sample_spec,
)
from amad.scenes.report import ks_critical, ks_distance, refit, scene_statistics

N_SCENES = 3000
N_PACKAGE = 2000  # package train images compared with (reading them costs ~1.5 ms each)


def _key(a):
    return (a.shape, a.colour, a.size, a.row, a.col)


@pytest.fixture(scope="module")
def generated():
    gen = SceneGenerator(seed=0)
    items = [gen[i] for i in range(N_SCENES)]
    images = torch.stack([im for im, _ in items])
    return images, [a for _, a in items], read_all(images)


@pytest.fixture(scope="module")
def package():
    images = src.load_images("train")[:N_PACKAGE]
    return images, read_all(images)


# Package images refitted by amad.scenes.report.refit (train image id, colour, x, y, width, height,
# background): interior shapes, shapes clipped by / touching every border, an apex at the top.
PACKAGE_SPECS = [
    (0, "rectangle", "blue", 53, 75, 60, 48, (248, 234, 230)),
    (8, "rectangle", "brown", 7, 0, 44, 56, (246, 231, 247)),
    (1, "triangle", "blue", 39, 75, 50, 50, (249, 241, 240)),
    (11, "triangle", "blue", 0, 109, 55, 55, (243, 231, 250)),
    (36, "triangle", "gray", 61, 39, 44, 44, (234, 246, 242)),
    (435, "triangle", "teal", 45, 128, 64, 64, (245, 252, 254)),
    (4, "circle", "red", 35, 34, 63, 63, (253, 242, 246)),
    (42, "circle", "black", 32, 95, 33, 33, (238, 253, 254)),
    (119, "circle", "brown", 66, 4, 62, 62, (236, 231, 235)),
]


@pytest.mark.parametrize("image_id, shape, colour, x, y, w, h, bg", PACKAGE_SPECS)
def test_renderer_reproduces_package_images_pixel_for_pixel(image_id, shape, colour, x, y, w, h, bg):
    """The easy-VQA drawing (128-px canvas, Pillow < 8 ellipse polygon, BILINEAR shrink) is rebuilt
    exactly. (Depends on Pillow's polygon filler and resize, unchanged from Pillow 6 to 13.)"""
    spec = SceneSpec(shape, colour, x, y, w, h, bg)
    want = src.load_images("train")[image_id]
    got = render_scene(spec)
    assert got.dtype == torch.uint8 and got.shape == (3, 64, 64)
    assert torch.equal(got, want), f"max |diff| {(got.int() - want.int()).abs().max()}"
    assert refit(want, read_attributes(want)) is not None


def test_reader_agrees_with_drawn_attributes_on_every_scene(generated):
    _, drawn, read = generated
    bad = [(i, d, r) for i, (d, r) in enumerate(zip(drawn, read, strict=True)) if _key(d) != _key(r)]
    assert not bad, f"{len(bad)} of {N_SCENES} disagree, e.g. {bad[:3]}"


def test_natural_scenes_cover_every_shape_with_every_colour_size_and_cell(generated):
    _, drawn, _ = generated
    keys = [_key(a) for a in drawn]
    assert {(s, c) for s, c, *_ in keys} == set(product(SHAPES, PALETTE))
    assert {(s, z) for s, _, z, *_ in keys} == set(product(SHAPES, SIZES))
    assert {(s, r, c) for s, _, _, r, c in keys} == set(product(SHAPES, range(3), range(3)))


def test_every_shape_colour_size_position_combination_can_be_drawn():
    """All 3 × 8 × 3 × 9 = 648 combinations: a conditioned geometry for each shape × size × cell, drawn in
    every colour (the geometry does not depend on it; where the recoloured scene is not reader-safe, since
    exactly-half-covered pixels round differently per colour, one is drawn for that colour), reads back as asked."""
    rng = np.random.default_rng(7)
    combos, redrawn = set(), 0
    for shape, size, row, col in product(SHAPES, SIZES, range(3), range(3)):
        spec, _, attrs = sample_scene(rng, shape=shape, colour="gray", size=size, row=row, col=col)
        assert _key(attrs) == (shape, "gray", size, row, col)
        for colour in PALETTE:
            s = replace(spec, colour=colour)
            if not reader_safe(s):
                s = sample_spec(rng, shape=shape, colour=colour, size=size, row=row, col=col)
                redrawn += 1
            assert _key(drawn_attributes(s)) == (shape, colour, size, row, col)
            got = read_attributes(render_scene(s))
            assert _key(got) == (shape, colour, size, row, col), s
            combos.add(_key(got))
    assert len(combos) == 648
    assert redrawn < 648 * 0.1


def test_generator_is_a_pure_function_of_seed_and_index():
    gen = SceneGenerator(seed=3)
    late = gen[57]
    for i in range(5):  # other scenes in between change nothing
        gen[i]
    again, fresh = gen[57], SceneGenerator(seed=3)[57]
    assert torch.equal(late[0], again[0]) and torch.equal(late[0], fresh[0])
    assert late[1] == again[1] == fresh[1]
    assert gen.spec(57) == SceneGenerator(3).spec(57)
    a, b = SceneGenerator(0), SceneGenerator(1)
    differ = sum(a.spec(i) != b.spec(i) for i in range(50))
    assert differ == 50
    assert len({SceneGenerator(0).spec(i) for i in range(200)}) == 200


def test_generator_length_and_indexing():
    gen = SceneGenerator(seed=0)
    with pytest.raises(TypeError):
        len(gen)
    with pytest.raises(IndexError):
        gen[-1]
    assert gen[10**9][0].shape == (3, 64, 64)  # unlimited
    sized = SceneGenerator(seed=0, length=4)
    assert len(sized) == 4 and len(list(sized)) == 4
    with pytest.raises(IndexError):
        sized[4]
    with pytest.raises(ValueError):
        SceneGenerator(seed=-1)


def test_sample_spec_follows_the_package_ranges_and_drawn_attributes():
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng) for _ in range(600)]
    lo, hi = BACKGROUND_RANGE
    for s in specs:
        assert all(lo <= v <= hi for v in s.background)
        assert MIN_EXTENT <= s.width <= MAX_EXTENT and MIN_EXTENT <= s.height <= MAX_EXTENT
        if s.shape == "triangle":
            assert 0 <= s.x <= 128 - s.width and math.ceil(s.width * math.sin(math.pi / 3)) <= s.y <= 128
        else:
            assert 0 <= s.x <= 128 - s.width and 0 <= s.y <= 128 - s.height
            assert s.shape == "rectangle" or s.width == s.height
    rects = [s for s in specs if s.shape == "rectangle"]
    assert min(s.aspect for s in rects) < 0.5 and max(s.aspect for s in rects) > 2  # independent sides
    spec, image, attrs = sample_scene(np.random.default_rng(1))
    assert drawn_attributes(spec) == attrs and torch.equal(render_scene(spec), image)
    with pytest.raises(ValueError):
        sample_spec(rng, shape="square")
    with pytest.raises(ValueError):
        sample_spec(rng, size="huge")
    with pytest.raises(ValueError):
        SceneSpec("circle", "red", 0, 0, 20, 30, (240, 240, 240))  # a circle has one diameter
    with pytest.raises(ValueError):
        SceneSpec("circle", "pink", 0, 0, 20, 20, (240, 240, 240))


def test_statistics_match_the_package(generated, package):
    """Tolerances: shares are binomial (3,000 vs 2,000 images: SE of a difference <= 0.014, we allow 3 SE);
    background means: SE of a difference 7.5 · sqrt(1/3000 + 1/2000) = 0.22, we allow 0.8; area and
    edge-pixel distributions per shape: two-sample KS distance below its 0.1 % critical value."""
    images, _, read = generated
    pkg_images, pkg_read = package
    g, p = scene_statistics(images, read), scene_statistics(pkg_images, pkg_read)
    lo, hi = BACKGROUND_RANGE
    assert g["background"]["min"] == p["background"]["min"] == [lo] * 3
    assert g["background"]["max"] == p["background"]["max"] == [hi] * 3
    assert np.allclose(g["background"]["mean"], p["background"]["mean"], atol=0.8)
    assert g["background"]["uniform_share"] == p["background"]["uniform_share"] == 1.0
    assert g["pure_colour_share"] == p["pure_colour_share"] == 1.0
    for key in ("shape", "colour", "size", "row", "col"):
        for v, share in p["shares"][key].items():
            assert abs(g["shares"][key][v] - share) < 0.042, (key, v, g["shares"][key][v], share)
    for s in SHAPES:
        gs, ps = g["per_shape"][s], p["per_shape"][s]
        for what in ("area_px", "edge_px"):
            a = [r[what] for r in p["_per_image"] if r["shape"] == s]
            b = [r[what] for r in g["_per_image"] if r["shape"] == s]
            assert ks_distance(a, b) < ks_critical(len(a), len(b)), (s, what, gs[what], ps[what])
        # the reader's shape feature: quantiles within 0.01 (measured: <= 0.003 apart)
        assert all(abs(gs["fill"][q] - ps["fill"][q]) < 0.01 for q in ("p5", "p50", "p95")), (s, gs["fill"], ps["fill"])
        assert abs(gs["touches_border_share"] - ps["touches_border_share"]) < 0.04, s
    # pure shape pixels carry exactly the palette colour; edge pixels lie between it and the background
    for img, a in zip(images[:200], read[:200], strict=True):
        px = img.permute(1, 2, 0).reshape(-1, 3)
        assert (px == torch.tensor(PALETTE[a.colour], dtype=torch.uint8)).all(-1).any()
