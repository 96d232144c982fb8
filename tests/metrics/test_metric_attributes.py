"""AttributeAccuracy: hand-checked English and German predictions, two-shape answers, id de-duplication, DDP sync."""

import pytest
import torch

from amad.metrics.attributes import AttributeAccuracy, attribute_record, named_values, reference_oracle
from amad.metrics.records import decode_records
from amad.scenes.attributes import ShapeAttributes
from amad.scenes.captions import TEMPLATES, all_attributes, render

RED_CIRCLE = ShapeAttributes("circle", "red", "large", 0, 0)
TEAL_TRIANGLE = ShapeAttributes("triangle", "teal", "small", 2, 1)
GREEN_RECT = ShapeAttributes("rectangle", "green", "medium", 1, 1)


def _values(m: AttributeAccuracy) -> dict[str, float]:
    return {k: float(v) for k, v in m.compute().items()}


@pytest.mark.parametrize(
    "text, shapes, colours",
    [
        ("A large red circle in the top left corner.", {"circle"}, {"red"}),
        ("The image shows a medium-sized teal triangle.", {"triangle"}, {"teal"}),
        ("A small gray shape at the bottom.", set(), {"gray"}),  # "shape" names no shape
        ("a grey rectangle", {"rectangle"}, {"gray"}),
        ("Circles and triangles", {"circle", "triangle"}, set()),
        ("Ein großer roter Kreis oben links.", {"circle"}, {"red"}),
        ("Das Bild zeigt einen mittelgroßen gelben Kreis.", {"circle"}, {"yellow"}),
        ("Es gibt ein blaugrünes Dreieck unten.", {"triangle"}, {"teal"}),  # not green
        ("Das blaugrüne Rechteck ist in der Mitte.", {"rectangle"}, {"teal"}),
        ("Das Rechteck ist klein und grün.", {"rectangle"}, {"green"}),  # predicative: bare stem
        ("Eine kleine schwarze Form unten.", set(), {"black"}),
        ("Zwei Dreiecke, eines braunen Rechtecks", {"triangle", "rectangle"}, {"brown"}),
        ("A RED CIRCLE", {"circle"}, {"red"}),
        ("", set(), set()),
    ],
)
def test_named_values(text, shapes, colours):
    assert named_values(text) == (shapes, colours)


def test_hand_checked_english_batch():
    m = AttributeAccuracy()
    preds = [
        "A large red circle in the top left corner.",  # both right
        "A large blue circle in the top left corner.",  # shape right, colour wrong
        "There is a teal rectangle at the bottom.",  # colour right, shape wrong
        "A red circle and a green rectangle.",  # two shapes, two colours: both wrong
    ]
    m.update(preds, [RED_CIRCLE, RED_CIRCLE, TEAL_TRIANGLE, GREEN_RECT], ids=[0, 1, 2, 3])
    assert _values(m) == pytest.approx({"attr_acc": 0.25, "shape_acc": 0.5, "colour_acc": 0.5})


def test_hand_checked_german_batch():
    m = AttributeAccuracy()
    preds = [
        "Ein großer roter Kreis oben links.",  # both right
        "Ein kleines grünes Dreieck unten.",  # teal image, "grün" is green: colour wrong
        "Das Rechteck ist mittelgroß und grün.",  # both right
        "Es gibt einen blaugrünen Kreis und ein blaugrünes Dreieck.",  # two shapes: shape wrong, colour right
    ]
    m.update(preds, [RED_CIRCLE, TEAL_TRIANGLE, GREEN_RECT, TEAL_TRIANGLE], ids=[0, 1, 2, 3])
    assert _values(m) == pytest.approx({"attr_acc": 0.5, "shape_acc": 0.75, "colour_acc": 0.75})


def test_two_shapes_or_two_colours_are_wrong_even_if_one_is_right():
    assert attribute_record("a red circle next to a red triangle", RED_CIRCLE) == {"s": False, "c": True}
    assert attribute_record("a red and blue circle", RED_CIRCLE) == {"s": True, "c": False}
    assert attribute_record("ein roter Kreis, ein rotes Dreieck", RED_CIRCLE) == {"s": False, "c": True}
    assert attribute_record("nothing here", RED_CIRCLE) == {"s": False, "c": False}
    # the same value named twice, or in both languages, is one value
    assert attribute_record("the red circle is red; der rote Kreis", RED_CIRCLE) == {"s": True, "c": True}


def test_ids_are_deduplicated_and_none_ids_all_count():
    m = AttributeAccuracy()
    m.update(["a red circle", "a blue circle"], [RED_CIRCLE, RED_CIRCLE], ids=[7, 8])
    # the sampler's padding repeats example 7 (with whatever the model said): counted once, the first time
    m.update(["a green square"], [RED_CIRCLE], ids=[torch.tensor(7)])
    assert _values(m) == pytest.approx({"attr_acc": 0.5, "shape_acc": 1.0, "colour_acc": 0.5})
    m2 = AttributeAccuracy()
    m2.update(["a red circle", "a red circle"], [RED_CIRCLE, RED_CIRCLE])
    m2.update(["a blue circle"], [{"shape": "circle", "colour": "red"}])  # mappings are accepted
    assert _values(m2)["attr_acc"] == pytest.approx(2 / 3)


def test_empty_and_bad_input():
    with pytest.warns(UserWarning, match="before the ``update``"):  # torchmetrics' own warning
        assert _values(AttributeAccuracy()) == {"attr_acc": 0.0, "shape_acc": 0.0, "colour_acc": 0.0}
    m = AttributeAccuracy()
    with pytest.raises(TypeError):
        m.update("a red circle", [RED_CIRCLE])
    with pytest.raises(ValueError, match="batch sizes differ"):
        m.update(["a", "b"], [RED_CIRCLE])
    with pytest.raises(ValueError, match="batch sizes differ"):
        m.update(["a"], [RED_CIRCLE], ids=[1, 2])
    with pytest.raises(TypeError):
        m.update(["a"], ["circle"])


def test_reference_oracle_scores_one_on_every_attribute_combination():
    attrs = list(all_attributes())
    for lang in ("en", "de"):
        m = AttributeAccuracy()
        m.update([reference_oracle(a, lang) for a in attrs], attrs, ids=list(range(len(attrs))))
        assert _values(m) == {"attr_acc": 1.0, "shape_acc": 1.0, "colour_acc": 1.0}, lang
    assert reference_oracle(TEAL_TRIANGLE) == "A small teal triangle at the bottom."
    assert reference_oracle(TEAL_TRIANGLE, "de") == "Ein kleines blaugrünes Dreieck unten."
    with pytest.raises(ValueError):
        reference_oracle(TEAL_TRIANGLE, "fr")


def test_every_template_sentence_names_the_right_values():
    """Each task sentence names the right colour; each names the right shape unless it says "shape" / "Form"."""
    for a in all_attributes():
        for t in range(len(TEMPLATES)):
            for text in render(a, t):
                shapes, colours = named_values(text)
                assert colours == {a.colour}, text
                assert shapes == (set() if t == 6 else {a.shape}), text


def test_sync_with_fake_gather_counts_sampler_padding_once():
    preds = ["a red circle", "a blue circle", "ein blaugrünes Dreieck", "a green rectangle", "a red circle"]
    attrs = [RED_CIRCLE, RED_CIRCLE, TEAL_TRIANGLE, GREEN_RECT, RED_CIRCLE]
    ids = [0, 1, 2, 3, 0]  # rank 1's last example is the sampler's repeat of example 0
    single = AttributeAccuracy()
    single.update(preds[:4], attrs[:4], ids=ids[:4])
    want = _values(single)
    local: list[torch.Tensor] = []

    def gather(tensor, group=None):
        return [t.to(tensor.dtype) for t in local]

    ranks = [AttributeAccuracy(dist_sync_fn=gather, distributed_available_fn=lambda: True) for _ in range(2)]
    shards = [[0, 2, 4], [1, 3]]
    for m, mine in zip(ranks, shards, strict=True):
        m.update([preds[i] for i in mine], [attrs[i] for i in mine], ids=[ids[i] for i in mine])
    local.extend(torch.cat(m.records) for m in ranks)
    for m, mine in zip(ranks, shards, strict=True):
        assert _values(m) == pytest.approx(want) == {"attr_acc": 0.75, "shape_acc": 1.0, "colour_acc": 0.75}
        assert len(decode_records(m.records)) == len(mine)  # local state restored after compute


def test_translation_scores_faithfulness_to_the_references_beside_the_image_attributes():
    """Template 6 says "shape" / "Form": a faithful translation names no shape, so attr_acc cannot count it
    right, while ref_attr_acc (names what a reference names) does; naming a shape the source did not is
    unfaithful."""
    from amad.metrics import ShapesTranslationBLEU

    form = render(TEAL_TRIANGLE, 6)[1]  # German sentence of the template that names no shape
    named = render(TEAL_TRIANGLE, 0)[1]
    m = ShapesTranslationBLEU()
    m.update(
        [form, named, "Ein kleines blaugrünes Dreieck unten."],
        [[form], [named], [form]],
        ids=[0, 1, 2],
        attributes=[TEAL_TRIANGLE] * 3,
    )
    got = {k: float(v) for k, v in m.compute().items()}
    assert got["attr_acc"] == pytest.approx(2 / 3) and got["ref_attr_acc"] == pytest.approx(2 / 3)
    m = ShapesTranslationBLEU()
    m.update([form], [[form]], ids=[0], attributes=[TEAL_TRIANGLE])
    got = {k: float(v) for k, v in m.compute().items()}
    assert got["attr_acc"] == 0.0 and got["ref_attr_acc"] == 1.0
