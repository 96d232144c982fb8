"""CaptionMetrics equals pycocoevalcap called directly; TranslationBLEU equals sacreBLEU; both dedup."""

import pytest
import sacrebleu
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from amad.metrics import CaptionMetrics, TranslationBLEU, java_available, metric_dict
from amad.metrics.captioning import coco_caption_scores, simple_tokenize

PREDS = ["A man riding a horse on the beach.", "two dogs play in the snow", "a red circle.", ""]
REFS = [
    ["A man rides a horse along the beach.", "Someone on a horse at the sea shore.", "a horse and rider on sand"],
    ["Two dogs are playing in the snow.", "Dogs run through snow.", "two dogs in snow"],
    ["A small red circle in the center.", "There is a red circle.", "The circle is red."],
    ["A blue triangle.", "The triangle is blue."],
]
needs_java = pytest.mark.skipif(not java_available(), reason="PTBTokenizer needs Java")


def _direct(preds, refs):
    gts = {i: [{"caption": c} for c in r] for i, r in enumerate(refs)}
    res = {i: [{"caption": p}] for i, p in enumerate(preds)}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {
        "bleu1": bleu[0],
        "bleu2": bleu[1],
        "bleu3": bleu[2],
        "bleu4": bleu[3],
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider": Cider().compute_score(gts, res)[0],
    }


@needs_java
def test_caption_metrics_equal_pycocoevalcap_directly():
    m = CaptionMetrics()
    m.update(PREDS[:2], REFS[:2], ids=[10, 11])
    m.update(PREDS[2:], REFS[2:], ids=[12, 13])
    m.update(PREDS[:1], REFS[:1], ids=[10])  # a DistributedSampler duplicate: must not count twice
    got = metric_dict(m)
    want = _direct(PREDS, REFS)
    assert m.tokenizer_used == "ptb"
    assert set(got) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"}
    for k, v in want.items():
        assert got[k] == pytest.approx(float(v), abs=1e-6), k
    assert all(isinstance(v, torch.Tensor) for v in m.compute().values())


def test_caption_fallback_tokenizer_without_java():
    assert simple_tokenize("A Man, riding; a horse!") == "a man riding a horse"
    got, used = coco_caption_scores(PREDS, REFS, tokenizer="simple")
    assert used == "simple"
    assert 0 < got["bleu1"] <= 1 and got["cider"] > 0
    perfect, _ = coco_caption_scores([r[0] for r in REFS], REFS, tokenizer="simple")
    assert perfect["bleu1"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)


def test_cider_of_a_single_image_is_zero():
    # CIDEr's IDF comes from the evaluated set: with one image every n-gram has IDF log(1/1) = 0.
    got, _ = coco_caption_scores(["a red circle"], [["a red circle"]], tokenizer="simple")
    assert got["cider"] == 0.0 and got["bleu1"] == pytest.approx(1.0)


def test_caption_metrics_empty_and_validation():
    m = CaptionMetrics(tokenizer="simple")
    with pytest.warns(UserWarning):
        assert all(float(v) == 0.0 for v in m.compute().values())
    with pytest.raises(ValueError):
        m.update(["x"], [[]])
    with pytest.raises(ValueError):
        CaptionMetrics(tokenizer="nope")


def test_translation_bleu_equals_sacrebleu_and_dedups():
    hyps = ["Ein kleiner roter Kreis oben links.", "das bild zeigt ein blaues Dreieck.", "Der Hund läuft schnell."]
    refs = [
        ["Ein kleiner roter Kreis oben links."],
        ["Das Bild zeigt ein kleines blaues Dreieck."],
        ["Der Hund rennt schnell über die Wiese."],
    ]
    m = TranslationBLEU()
    m.update(hyps, refs, ids=[0, 1, 2])
    m.update(hyps[:1], refs[:1], ids=[0])
    want = sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs]]).score
    assert float(m.compute()) == pytest.approx(want, abs=1e-4)
    ml = TranslationBLEU(lowercase=True)
    ml.update(hyps, refs, ids=[0, 1, 2])
    want_l = sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs]], lowercase=True).score
    assert float(ml.compute()) == pytest.approx(want_l, abs=1e-4)
    assert want_l > want  # "das bild" matches only case-insensitively
    assert metric_dict(ml) == {"bleu": pytest.approx(want_l, abs=1e-4)}


def test_translation_bleu4_is_pycocoevalcaps_on_simple_tokens():
    from pycocoevalcap.bleu.bleu import Bleu

    hyps = ["Ein kleiner roter Kreis, oben links.", "das Bild zeigt ein blaues Dreieck", "Der Hund läuft schnell."]
    refs = [["ein kleiner roter kreis oben links"], ["Das Bild zeigt ein kleines blaues Dreieck."], ["der hund"]]
    m = TranslationBLEU(lowercase=True, bleu4=True)
    m.update(hyps, refs, ids=[0, 1, 2])
    m.update(hyps[:1], refs[:1], ids=[0])  # counted once
    got = metric_dict(m)
    assert set(got) == {"bleu", "bleu4"} and m.names == ("bleu", "bleu4")
    # tokenised by hand: lower case, punctuation gone (what simple_tokenize does)
    gts = {"0": ["ein kleiner roter kreis oben links"], "1": ["das bild zeigt ein kleines blaues dreieck"],
           "2": ["der hund"]}  # fmt: skip
    res = {"0": ["ein kleiner roter kreis oben links"], "1": ["das bild zeigt ein blaues dreieck"],
           "2": ["der hund läuft schnell"]}  # fmt: skip
    want = Bleu(4).compute_score(gts, res, verbose=0)[0][3]
    assert got["bleu4"] == pytest.approx(want, abs=1e-6) and 0 < want < 1
    assert got["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs]], lowercase=True).score, abs=1e-4
    )
    assert TranslationBLEU().names == ("bleu",)  # off by default: a scalar, as before


def test_translation_bleu_variable_references_and_short_sentences():
    hyps = ["a b c d e", "x y z w"]
    refs = [["a b c d e", "a b c d f"], ["x y z w"]]
    m = TranslationBLEU()
    m.update(hyps, refs)
    want = sacrebleu.corpus_bleu(hyps, [["a b c d e", "x y z w"], ["a b c d f", None]]).score
    assert float(m.compute()) == pytest.approx(want) == pytest.approx(100.0)
    short = TranslationBLEU()
    short.update(["a cat"], [["a cat"]])  # under 4 tokens: no 4-gram, BLEU-4 = 0
    assert float(short.compute()) == 0.0


@needs_java
@pytest.mark.slow
def test_meteor_equals_pycocoevalcap_directly():
    from pycocoevalcap.meteor.meteor import Meteor

    m = CaptionMetrics(meteor=True)
    m.update(PREDS, REFS, ids=[0, 1, 2, 3])
    got = metric_dict(m)
    gts = PTBTokenizer().tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(REFS)})
    res = PTBTokenizer().tokenize({i: [{"caption": p}] for i, p in enumerate(PREDS)})
    want = Meteor().compute_score(gts, res)[0]
    assert set(got) == set(m.names) and "meteor" in got
    assert got["meteor"] == pytest.approx(want, abs=1e-6)
