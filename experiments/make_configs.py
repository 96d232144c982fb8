"""Write experiments/<task>/<model>/<method>.yaml: small leaves over the shared files in base/.

Run after changing the task or method tables: ``python experiments/make_configs.py``.
tests/test_configs.py checks the committed leaves are what this script writes, and instantiates each.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from amad.config import load_config
from amad.losses import METHODS as ATTENTION_METHODS

ROOT = Path(__file__).parent

#: task -> (data base file, BLIP family, VL-T5 text prefix, embedded?)
TASKS = {
    "easyvqa": ("easyvqa", "blip-vqa", "vqa:", True),
    "shapes-caption": ("shapes-caption", "blip-caption", "caption:", True),
    "shapes-translate": ("shapes-translate", "blip-vqa", "translate English to German:", True),
    "vqav2": ("vqav2", "blip-vqa", "vqa:", False),
    "coco-karpathy": ("coco-karpathy", "blip-caption", "caption:", False),
    "multi30k": ("multi30k", "blip-vqa", "translate English to German:", False),
}

#: registry methods without a config: the learned (QK)² projection is practical for short maps only
NO_CONFIG = {"amad_proj": "learned (QK)^2 projection: for short maps only"}
#: extra AMAD variants, each a config of its own
AMAD_VARIANTS = ("l2", "token")
#: data settings that decide what a comparison's teacher reads: an embedded config copies them from
#: its comparison, so its data always fits the teacher it names
TEACHER_DATA_KEYS = ("image_size", "normalize", "text_prefix", "max_source_len", "max_target_len", "tokenizer_path")


def attention(name: str, **init_args) -> dict:
    entry: dict = {"class_path": f"amad.losses.{ATTENTION_METHODS[name].__name__}"}
    if init_args:
        entry["init_args"] = init_args
    return {"attention": entry}


#: method -> DistillationModule init_args: the two output-only baselines, every registry method, AMAD variants
METHODS = {
    "gt": {"beta": 0.0, "attention": None},
    "kd": {"attention": None},
    **{name: attention(name) for name in ATTENTION_METHODS if name not in NO_CONFIG and name != "amad"},
    "amad": attention("amad", variant="kl"),
    **{f"amad_{v}": attention("amad", variant=v) for v in AMAD_VARIANTS},
}

#: real-data teachers: fine-tuned from a local pretrained checkpoint (no hub access here)
REAL_TEACHER_INIT = {"blip": "pretrained/{family}-base", "vlt5": "pretrained/vl-t5-base"}


def teacher_ref(task: str, model: str, embedded: bool) -> str:
    if embedded:
        return f"compare:experiments/compare/{task}_{model}.yaml"
    return f"checkpoints/teachers/{task}_{model}"  # written by `amad export` after the teacher run


def leaf(task: str, model: str, method: str) -> tuple[str, dict]:
    data, blip_family, prefix, embedded = TASKS[task]
    family = blip_family if model == "blip" else "vlt5"
    rel = "../../base"
    cfg: dict = {"base": [f"{rel}/trainer.yaml", f"{rel}/data/{data}.yaml"]}
    if embedded:
        compared = load_config(ROOT / "compare" / f"{task}_{model}.yaml")["data"]["init_args"]
        reads = {k: compared[k] for k in TEACHER_DATA_KEYS if k in compared}
        if reads:
            cfg["data"] = {"init_args": reads}
    elif model == "vlt5":
        cfg["data"] = {"init_args": {"text_prefix": prefix}}
    if method == "teacher":
        cfg["base"].append(f"{rel}/finetune.yaml")
        if embedded:  # the comparison's teacher recipe (its fingerprint needs more: see amad compare)
            spec = load_config(ROOT / "compare" / f"{task}_{model}.yaml")["teacher"]["model"]
        else:
            spec = REAL_TEACHER_INIT[model].format(family=family)
        cfg["model"] = {"init_args": {"model": spec}}
        cmd = f"amad fit --config experiments/{task}/{model}/teacher.yaml"
        note = (
            "# The embedded comparisons train this teacher themselves (and cache it); this file runs it alone."
            if embedded
            else "# Fine-tunes from a local pretrained checkpoint directory; then "
            f"`amad export <last.ckpt> checkpoints/teachers/{task}_{model}`."
        )
    else:
        cfg["base"].append(f"{rel}/distill.yaml")
        cfg["model"] = {"init_args": {"teacher": teacher_ref(task, model, embedded), **METHODS[method]}}
        cmd = f"amad fit --config experiments/{task}/{model}/{method}.yaml"
        note = (
            "# The teacher is the comparison's: reused from the cache, or trained once on first use."
            if embedded
            else "# Needs the fine-tuned teacher at model.init_args.teacher (see teacher.yaml)."
        )
    return f"# {cmd}\n{note}\n", cfg


def render(task: str, model: str, method: str) -> str:
    head, cfg = leaf(task, model, method)
    return head + yaml.safe_dump(cfg, sort_keys=False, width=110)


def all_leaves():
    for task in TASKS:
        for model in ("blip", "vlt5"):
            for method in ("teacher", *METHODS):
                yield ROOT / task / model / f"{method}.yaml", render(task, model, method)


def main() -> None:
    for path, text in all_leaves():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {sum(1 for _ in all_leaves())} configs under {ROOT}")


if __name__ == "__main__":
    main()
