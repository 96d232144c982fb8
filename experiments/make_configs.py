"""Write experiments/<task>/<model>/<method>.yaml: small leaves over the shared files in base/.

Run after changing the task or method tables: ``python experiments/make_configs.py``.
tests/test_configs.py checks the committed leaves are what this script writes, and instantiates each.
"""

from __future__ import annotations

from pathlib import Path

import yaml

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

#: method -> DistillationModule init_args
METHODS = {
    "gt": {"beta": 0.0, "attn_method": "none"},
    "kd": {"attn_method": "none"},
    "one_to_one": {"attn_method": "one_to_one"},
    "head_mean": {"attn_method": "head_mean"},
    "minilm_relation": {"attn_method": "minilm_relation"},
    "shd": {"attn_method": "shd"},
    "a2d": {"attn_method": "a2d"},
    "attn_distill": {"attn_method": "attn_distill"},
    "amad": {"attn_method": "amad", "attn_options": {"variant": "kl"}},
    "amad_l2": {"attn_method": "amad", "attn_options": {"variant": "l2"}},
    "amad_token": {"attn_method": "amad", "attn_options": {"variant": "token"}},
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
    if model == "vlt5":
        cfg["data"] = {"init_args": {"text_prefix": prefix}}
    if method == "teacher":
        cfg["base"].append(f"{rel}/finetune.yaml")
        spec = {"family": family, "preset": "small"} if embedded else REAL_TEACHER_INIT[model].format(family=family)
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
