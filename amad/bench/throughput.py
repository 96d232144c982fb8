"""Throughput of the demo comparison's training: samples/s, and the fraction of time spent waiting for data.

Runs the AMAD student of ``experiments/compare/easyvqa_blip.yaml`` (default preset data, batch and
student) for a fixed number of steps with a randomly initialised teacher of the configured shape
(speed does not depend on the teacher's weights), timing every step with a callback: data wait is the
gap between the end of one step and the start of the next (the DataLoader fetching and collating).
"""

from __future__ import annotations

import lightning as L

from amad.bench.common import print_table, write_json
from amad.callbacks.timing import StepTimer

CONFIG = "experiments/compare/easyvqa_blip.yaml"


def run(out: str | None = None, quick: bool = False, config: str = CONFIG) -> dict:
    from amad.compare.config import load_compare_config, make_datamodule, method_kwargs
    from amad.lit import DistillationModule
    from amad.models import build_model

    cfg = load_compare_config(config, "smoke" if quick else "default")
    dm = make_datamodule(cfg["data"])
    L.seed_everything(0, verbose=False)
    teacher = build_model(**{**cfg["teacher"]["model"], "vocab_size": dm.vocab_size})
    teacher.tokenizer = dm.tokenizer
    module = DistillationModule(
        teacher=teacher,
        student=dict(cfg["student"]),
        task=dm.task,
        **method_kwargs(cfg["methods"]["amad"]),
    )
    timer = StepTimer()
    steps = 8 if quick else 60
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        accelerator="auto",
        devices=1,
    )
    trainer.fit(module, datamodule=dm)
    compute, wait = sum(timer.compute), sum(timer.wait)
    rec = {
        "config": config,
        "method": "amad",
        "steps_timed": len(timer.compute),
        "batch_size": timer.sizes[0] if timer.sizes else None,
        "samples_per_s": sum(timer.sizes) / (compute + wait) if timer.compute else None,
        "data_wait_fraction": wait / (compute + wait) if timer.compute else None,
    }
    print_table("throughput", [rec], ("config", "batch_size", "samples_per_s", "data_wait_fraction"))
    return write_json({"throughput": [rec]}, out)
