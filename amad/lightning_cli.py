"""LightningCLI for ``amad fit|validate|test|predict``: models and data in subclass mode.

* DataModule facts are linked into the model: ``data.task → model.task`` and
  ``data.vocab_size → model.vocab_size`` (the model is built for the data's vocabulary, and a
  teacher whose vocabulary does not match is rejected).
* W&B is the default logger, offline unless the user set ``WANDB_MODE`` (``amad`` sets the default
  on import), so a run never waits on the network; ``--trainer.logger`` switches to CSV/TensorBoard.
  The full resolved config is saved with the run (``config.yaml`` and the W&B run config).
* ``--config`` files may inherit with ``base:`` (see :mod:`amad.config`).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from amad.config import load_config

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "amad", "save_dir": "runs"},
    },
    "default_root_dir": "runs",
    "log_every_n_steps": 10,
}


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save the resolved config next to the run *and* into the logger's hyperparameters (W&B config)."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.config.as_dict()})


class AmadCLI(LightningCLI):
    """LightningCLI with amad's links between the DataModule and the system."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.task", "model.init_args.task", apply_on="instantiate")
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")


def resolve_config_args(args: list[str], tmp_dir: str) -> list[str]:
    """Replace every ``--config FILE`` by a merged copy with its ``base:`` chain resolved."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        path = None
        if arg in ("--config", "-c") and i + 1 < len(args):
            path, i = args[i + 1], i + 1
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        if path is None:
            out.append(arg)
        else:
            merged = load_config(path)
            target = Path(tmp_dir) / f"{len(out)}_{Path(path).name}"
            target.write_text(yaml.safe_dump(merged, sort_keys=False))
            out += ["--config", str(target)]
        i += 1
    return out


def build_cli(args: list[str], run: bool = True) -> AmadCLI:
    """Instantiate the CLI (``run=False`` parses and instantiates without running a subcommand)."""
    # We pass the (config-resolved) command line as args=; Lightning warns when sys.argv is also set.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    with tempfile.TemporaryDirectory(prefix="amad-config-") as tmp:
        return AmadCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LoggerSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            args=resolve_config_args(args, tmp),
            run=run,
            auto_configure_optimizers=False,
        )


def run_lightning_cli(args: list[str]) -> None:
    build_cli(args, run=True)
