"""Train a comparison's teacher once, and reuse it: cached by a fingerprint of its config and data.

Lookup order: ``teacher.path`` (a shipped or user-given ``save_pretrained`` dir / ``.ckpt``; a shipped
one carries ``teacher.json`` and is used only while its fingerprint matches the config's recipe and
data), then ``<cache>/teachers/<name>-<fingerprint>/``; otherwise the teacher is trained by its recipe
(:func:`train_teacher`: optional pre-training stages on generated scenes, then fine-tuning on the
task's training split) and written there (``save_pretrained`` layout plus ``teacher.json`` with its
recipe, per-stage records, test metrics and training time). The cache root is ``$AMAD_CACHE`` or
``~/.cache/amad``.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from amad.artefacts import FileLock
from amad.compare.config import fingerprint, load_compare_config, make_datamodule, optimization_kwargs
from amad.compare.system import evaluate_system, save_hf_model, system_path, train_system_teacher
from amad.compare.teacher_files import (
    cached_teacher,
    check_teacher_path,
    load_last_stage,
    public_record,
    publish_teacher,
    quiet_trainer,
    save_stage,
)
from amad.compare.tower_stage import shared_attribute_stage
from amad.lit.base import COMPARE_PREFIX
from amad.paths import cache_root

TEACHER_KEYS = (
    "model",
    "max_steps",
    "lr",
    "lr_scale",
    "weight_decay",
    "warmup_ratio",
    "schedule",
    "seed",
    "precision",
    "max_new_tokens",
    "data",
)
#: recipe keys added later: in the fingerprint only where a recipe sets them (older fingerprints hold;
#: null, which a preset uses to drop an inherited stage, counts as unset)
RECIPE_KEYS = ("pretrain", "freeze")


def teacher_fingerprint(cfg: dict[str, Any], data_facts: dict[str, Any]) -> str:
    """Hash of the teacher's recipe, its data config and the data's own facts (source, sizes, version)."""
    t = cfg["teacher"]
    recipe = {k: t.get(k) for k in TEACHER_KEYS if k != "data"} | {k: t[k] for k in RECIPE_KEYS if t.get(k) is not None}
    return _recipe_fingerprint(cfg, recipe | _system_recipe(cfg), data_facts)


def _system_recipe(cfg: dict[str, Any]) -> dict[str, Any]:
    """An any-model comparison's teacher is trained by its system (its class and fixed settings: not the
    headline metric); absent for BLIP / VL-T5, whose fingerprints hold."""
    system = cfg.get("system")
    if not system:
        return {}
    return {"system": {"class_path": system["class_path"], "init_args": system.get("init_args") or {}}}


def pretrain_fingerprint(cfg: dict[str, Any], data_facts: dict[str, Any]) -> str:
    """Hash of what the pre-training stages depend on (model, seed, precision, ``pretrain``, data), not of
    the fine-tuning keys: recipes that differ only in fine-tuning share their pre-trained stages."""
    t = cfg["teacher"]
    return _recipe_fingerprint(cfg, {k: t.get(k) for k in ("model", "seed", "precision", "pretrain")}, data_facts)


def _recipe_fingerprint(cfg: dict[str, Any], recipe: dict[str, Any], data_facts: dict[str, Any]) -> str:
    return fingerprint({"teacher": recipe, "data": teacher_datamodule_config(cfg), "data_facts": data_facts})


def teacher_datamodule_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The teacher trains on the full data unless its own ``teacher.data`` overrides (e.g. fraction)."""
    from amad.config import deep_merge

    return deep_merge(cfg["data"], cfg["teacher"].get("data", {}) or {})


def ensure_teacher(cfg: dict[str, Any], log=print) -> tuple[Path, dict[str, Any]]:
    """Return (teacher dir or file, teacher record with ``metrics``, ``train_time_s``, ``fingerprint``).

    One process at a time finds or trains a comparison's teacher (a lock in the cache; another waits,
    then reuses what the first trained). A damaged cached teacher or kept stage is set aside and
    retrained; a damaged ``teacher.path`` is a :class:`~amad.artefacts.DamagedFile` error naming the file
    (:mod:`amad.compare.teacher_files`).

    Args:
        cfg: the loaded comparison config.
        log: progress printer.
    """
    lock = cache_root() / "locks" / f"teacher-{cfg['name']}.lock"  # beside, not in, teachers/
    with FileLock(lock, f"the teacher cache of {cfg['name']}", wait=True):
        return _ensure_teacher(cfg, log)


def _ensure_teacher(cfg: dict[str, Any], log=print) -> tuple[Path, dict[str, Any]]:
    t = cfg["teacher"]
    dm = make_datamodule(teacher_datamodule_config(cfg))
    facts = getattr(dm, "metadata", {})
    fp = teacher_fingerprint(cfg, facts)
    if t.get("path"):
        path = Path(t["path"])
        if not path.exists():
            raise FileNotFoundError(
                f"teacher.path {path} does not exist (expected a save_pretrained dir "
                "or .ckpt); remove teacher.path to train the teacher instead"
            )
        record = public_record(check_teacher_path(path))  # damaged: one error naming the file
        if record.get("fingerprint", fp) == fp:  # a user's teacher has no record: trust the path
            log(f"teacher: using {path}")
            return path, {**record, "source": str(path)}
        log(
            f"teacher: {path} was trained with another recipe or data (fingerprint "
            f"{record['fingerprint']} != {fp}); training a fresh one"
        )
    out = cache_root() / "teachers" / f"{cfg['name']}-{fp}"
    record = cached_teacher(out)  # damaged: set aside (one warning line) and trained again
    if record is not None:
        log(f"teacher: reusing {out}")
        return out, {**record, "source": str(out)}
    log(f"teacher: training {t['model']} (cached as {out})")
    # pre-trained stages are kept by their own recipe: an interrupted run resumes after the last one,
    # and a recipe that changes only its fine-tuning starts from them
    stages_dir = None
    if t.get("pretrain"):
        key = f"{cfg['name']}-{pretrain_fingerprint(cfg, facts)}"
        stages_dir = cache_root() / "teacher_stages" / key
    save = None
    if system_path(cfg):  # an any-model system trains it with teacher=None (amad.compare.system)
        model, stages = train_system_teacher(cfg, dm, log)
        test, oracle, save = evaluate_system(model, dm, "test"), None, save_hf_model
    else:
        model, stages = train_teacher(cfg, dm, log, resume_dir=stages_dir)
        test = evaluate_model(model, dm, "test", t["max_new_tokens"])
        oracle = oracle_metrics(dm, "test")
    record = {
        "fingerprint": fp,
        "config": {k: t.get(k) for k in TEACHER_KEYS + RECIPE_KEYS} | _system_recipe(cfg),
        "metrics": test,
        **({"oracle": oracle} if oracle else {}),
        "stages": stages,
        "train_time_s": round(sum(s["train_time_s"] for s in stages), 1),
        "steps": int(t["max_steps"]),
        "command": " ".join(["amad", *sys.argv[1:]]) if sys.argv[0].endswith("amad") else None,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
    }
    publish_teacher(model, out, record, save)
    log(f"teacher: test {test} after {record['train_time_s']:.0f}s of training")
    return out, {**record, "source": str(out)}


def teacher_shortfalls(record: dict[str, Any], target: dict[str, Any] | None) -> list[str]:
    """What a teacher misses of its ``teacher.target`` (``metric``, ``min``, and ``kinds_min`` for every
    breakdown ``<metric>_<kind>`` of it, e.g. VQA's question kinds); [] when it meets it or has none."""
    if not target:
        return []
    metrics, metric = record.get("metrics") or {}, target["metric"]
    if metric not in metrics:
        return [f"{metric} not measured (have {sorted(metrics)})"]
    out = []
    if metrics[metric] < float(target.get("min", 0.0)):
        out.append(f"{metric} {metrics[metric]:.4f} < {float(target['min']):.2f}")
    if target.get("kinds_min") is not None:
        kinds = {k: v for k, v in metrics.items() if k.startswith(metric + "_")}
        out += [f"{k} {v:.4f} < {float(target['kinds_min']):.2f}" for k, v in kinds.items() if v < target["kinds_min"]]
    return out


def _trainer(max_steps: int, precision: str, prefix: str, log) -> L.Trainer:
    from amad.callbacks.progress import ProgressLine

    return quiet_trainer(max_steps, precision, [ProgressLine(prefix, every_n_steps=max(max_steps // 10, 1), write=log)])


def train_teacher(
    cfg: dict[str, Any], dm: Any, log=print, resume_dir: Path | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """Run the teacher's recipe, stage by stage; returns (the model, one record per stage).

    Stages (``teacher:`` of a comparison YAML), each optional but the last:

    1. ``pretrain.attributes``: the image encoder reads generated scenes' attributes
       (:class:`~amad.lit.attributes.SceneAttributeModule`; ``max_steps``, ``lr``, ``batch_size``,
       ``scenes``, ``seed``, ``warmup_ratio``, ``schedule``, ``weight_decay``).
    2. ``pretrain.task``: the task itself on generated scenes — their questions and answers, captions or
       translations (:class:`~amad.lit.FineTuneModule` on the task's DataModule with ``train_scenes``;
       ``max_steps``, ``scenes``, ``seed``, ``freeze`` and the optimisation keys).
    3. fine-tuning on the task's training split: ``max_steps``, ``freeze`` and the optimisation keys of
       ``teacher:`` itself.

    Every stage is seeded from ``teacher.seed``; the validation split of each stage's end is recorded.
    With ``resume_dir``, the weights and record after each pre-training stage are kept there
    (``stage<i>.pt``) and a rerun resumes after the last one kept: each stage reseeds itself, so a
    resumed recipe trains what an uninterrupted one does. Resumed stages keep their own records
    (``train_time_s`` is the time that stage took when it ran) and are marked ``"resumed": true``.
    """
    from amad.config import deep_merge
    from amad.lit import FineTuneModule

    t, pre = cfg["teacher"], cfg["teacher"].get("pretrain") or {}
    precision = t.get("precision", "32-true")
    seed = int(t.get("seed", 0))
    L.seed_everything(seed, workers=True, verbose=False)
    finetune = FineTuneModule(
        model=dict(t["model"]), vocab_size=dm.vocab_size, task=dm.task, freeze=t.get("freeze"), **optimization_kwargs(t)
    )
    model = finetune.model
    model.tokenizer = dm.tokenizer
    stages: list[dict[str, Any]] = _resume(model, resume_dir, log)

    def keep(record: dict[str, Any]) -> None:
        stages.append(record)
        if resume_dir is not None:
            save_stage(resume_dir, len(stages), {"state_dict": model.state_dict(), "stages": stages})

    names = [s["stage"] for s in stages]
    if "attributes" in pre and "pretrain.attributes" not in names:
        st = pre["attributes"]
        if st.get("shared"):  # one tower stage per family group, trained once and reused by every teacher
            keep(shared_attribute_stage(model, t["model"], st, dm, precision, seed, attribute_stage, log))
        else:
            keep(attribute_stage(model, st, dm, precision, seed, log))
    if "task" in pre and "pretrain.task" not in names:
        st = pre["task"]
        L.seed_everything(seed + 1, workers=True, verbose=False)
        scenes = {"train_scenes": int(st["max_steps"]) * dm.batch_size, "scene_seed": int(st.get("seed", 1))}
        if st.get("scenes"):
            scenes["scene_pool"] = int(st["scenes"])
        scene_dm = make_datamodule(deep_merge(teacher_datamodule_config(cfg), {"init_args": scenes}))
        module = FineTuneModule(model=model, task=dm.task, freeze=st.get("freeze"), **optimization_kwargs(st))
        keep(_fit("pretrain.task", module, scene_dm, int(st["max_steps"]), precision, log))
    if stages:  # a recipe without pre-training keeps the one seeded stream it always had
        L.seed_everything(seed + 2, workers=True, verbose=False)
    stages.append(_fit("finetune", finetune, dm, int(t["max_steps"]), precision, log))
    return model, stages


def _resume(model: Any, resume_dir: Path | None, log) -> list[dict[str, Any]]:
    """Load the last stage kept in ``resume_dir`` into ``model``; its stage records (or [])."""
    found = load_last_stage(resume_dir, model)  # a damaged stage file is set aside, the one before used
    if found is None:
        return []
    state = found[0]
    log(f"teacher: resuming after {', '.join(s['stage'] for s in state['stages'])} (kept in {resume_dir})")
    return [{**s, "resumed": True} for s in state["stages"]]


def _fit(name: str, module: Any, dm: Any, steps: int, precision: str, log) -> dict[str, Any]:
    trainer = _trainer(steps, precision, f"teacher {name}:", log)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    elapsed = time.perf_counter() - start
    val = evaluate_model(module.trainable, dm, "val", module.max_new_tokens)
    log(f"teacher {name}: {steps} steps in {elapsed:.0f}s; val {val}")
    return {"stage": name, "steps": steps, "train_time_s": round(elapsed, 1), "val": val}


def attribute_stage(model: Any, st: dict[str, Any], dm: Any, precision: str, seed: int, log) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from amad.data.collate import AttributeCollator
    from amad.lit.attributes import SceneAttributeModule
    from amad.scenes.datasets import SceneAttributeDataset

    L.seed_everything(seed, workers=True, verbose=False)
    steps, bs = int(st["max_steps"]), int(st.get("batch_size", 64))
    data = SceneAttributeDataset(steps * bs, seed=int(st.get("seed", 0)), pool=int(st.get("scenes", 20_000)))
    collate = AttributeCollator(dm.image_size, dm.normalize)
    loader = DataLoader(data, batch_size=bs, shuffle=True, collate_fn=collate)
    module = SceneAttributeModule(
        model, **{k: st[k] for k in ("lr", "weight_decay", "warmup_ratio", "schedule") if k in st}
    )
    trainer = _trainer(steps, precision, "teacher pretrain.attributes:", log)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    elapsed = time.perf_counter() - start
    # read back on scenes of another seed: never seen in training
    held_out = SceneAttributeDataset(1024, seed=int(st.get("seed", 0)) + 10_000, pool=1024)
    acc = module.accuracy(DataLoader(held_out, batch_size=256, collate_fn=collate))
    log(f"teacher pretrain.attributes: {steps} steps in {elapsed:.0f}s; held-out scenes {acc}")
    return {"stage": "pretrain.attributes", "steps": steps, "train_time_s": round(elapsed, 1), "held_out": acc}


def oracle_metrics(dm: Any, split: str = "test") -> dict[str, float] | None:
    """The task metric of a reference oracle on ``split``: each image's true attributes written by the
    first caption template (English) or its German translation — what a perfect reader of the image
    scores (below 100 BLEU / the references' CIDEr where the split's references use other templates).
    None for tasks without image attributes (VQA, real data)."""
    from amad.metrics import metric_dict, reference_oracle

    if getattr(dm, "task", None) not in ("caption", "translate") or not getattr(dm, "synthetic", False):
        return None
    dm.setup("test" if split == "test" else "validate")
    examples = dm.datasets[split].examples
    language = "en" if dm.task == "caption" else "de"
    metric = dm.make_metric()
    metric.update(
        [reference_oracle(ex.attributes, language) for ex in examples],
        [list(ex.references) for ex in examples],
        ids=[ex.id for ex in examples],
        attributes=[ex.attributes for ex in examples],
    )
    return metric_dict(metric)


def evaluate_model(model: Any, dm: Any, split: str, max_new_tokens: int) -> dict[str, float]:
    """The task metrics of ``model`` on ``split`` (``val`` or ``test``) of ``dm``, generating up to
    ``max_new_tokens`` (required: a caption cut at a default length loses the words that are scored)."""
    from amad.lit import FineTuneModule

    module = FineTuneModule(model=model, task=dm.task, max_new_tokens=int(max_new_tokens))
    return evaluate_system(module, dm, split)


def resolve_teacher_reference(spec: str, log=print) -> str:
    """``compare:<comparison yaml>`` → the path of that comparison's teacher (shipped, cached, or trained now).

    The ``amad`` command calls this on every such config value before it builds anything, so no
    constructor ever trains a model. Training a teacher here leaves the global RNGs (torch, numpy,
    python) as they were: what is built afterwards is the same whether the teacher was just trained
    or loaded from the cache.

    Raises:
        ValueError: ``spec`` is not a ``compare:`` reference (or its comparison config is invalid).
        FileNotFoundError: the comparison YAML does not exist.
    """
    if not spec.startswith(COMPARE_PREFIX):
        raise ValueError(f"{spec!r} is not a {COMPARE_PREFIX}<comparison yaml> reference")
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        try:
            path, _ = ensure_teacher(load_compare_config(spec[len(COMPARE_PREFIX) :]), log=log)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    return str(path)
