"""LightningCLI for ``amad fit|validate|test|predict``: models and data in subclass mode.

* DataModule facts are linked into the model: ``data.task → model.task`` and
  ``data.vocab_size → model.vocab_size`` (the model is built for the data's vocabulary, and a
  teacher whose vocabulary does not match is rejected).
* W&B is the default logger, offline unless the user set ``WANDB_MODE`` (the ``amad`` command sets
  the default), so a run never waits on the network; ``--trainer.logger`` switches to CSV/TensorBoard.
  The full resolved config is saved with the run (``config.yaml`` and the W&B run config).
* ``--config`` files may inherit with ``base:`` (see :mod:`amad.config`).
* ``compare:<comparison yaml>`` values (a comparison's teacher) are resolved to the teacher's path
  here, before anything is parsed or built (:func:`amad.compare.teacher.resolve_teacher_reference`):
  no constructor ever trains a model.
* Parse errors raise (``exit_on_error=False``): ``amad`` prints them as one ``amad: error:`` line.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from amad.artefacts import check_zip
from amad.config import deep_merge, load_config, method_subclasses
from amad.lit.base import COMPARE_PREFIX
from amad.losses.methods import checkpoint_safe_globals

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


def _compare_refs(value: Any) -> set[str]:
    """Every ``compare:<yaml>`` string in ``value`` (at any depth)."""
    if isinstance(value, dict):
        return set().union(*(_compare_refs(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_compare_refs(v) for v in value)) if value else set()
    return {value} if isinstance(value, str) and value.startswith(COMPARE_PREFIX) else set()


def _replace(value: Any, paths: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _replace(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, paths) for v in value]
    return paths.get(value, value) if isinstance(value, str) else value


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = tree.get(key)
        tree = tree.setdefault(key, {}) if isinstance(node, dict) or node is None else {}
    tree[leaf] = value


def _split(args: list[str]) -> list[tuple[str, Any]]:
    """The command line as ``("config", merged dict)``, ``("set", (key, value))`` and ``("arg", text)`` items."""
    items, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("--config", "-c") and i + 1 < len(args):
            items.append(("config", (args[i + 1], load_config(args[i + 1]))))
            i += 1
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            items.append(("config", (path, load_config(path))))
        elif arg.startswith("--") and "=" in arg:
            items.append(("set", tuple(arg[2:].split("=", 1))))
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            items.append(("set", (arg[2:], args[i + 1])))
            i += 1
        else:
            items.append(("arg", arg))
        i += 1
    return items


def resolve_config_args(args: list[str], tmp_dir: str) -> list[str]:
    """The command line for LightningCLI: every ``--config FILE`` replaced by a merged copy (its ``base:``
    chain resolved), and the ``compare:<yaml>`` references that survive all overrides replaced by their
    teacher's path (trained now if neither shipped nor cached). A reference that a later option overrides
    is never resolved, so overriding a config's teacher never trains the one it named."""
    items = _split(args)
    final: dict[str, Any] = {}
    for kind, payload in items:
        if kind == "config":
            final = deep_merge(final, payload[1])
        elif kind == "set":
            _set(final, *payload)
    from amad.compare.teacher import resolve_teacher_reference

    paths = {ref: resolve_teacher_reference(ref) for ref in sorted(_compare_refs(final))}
    out: list[str] = []
    for kind, payload in items:
        if kind == "config":
            path, merged = payload
            target = Path(tmp_dir) / f"{len(out)}_{Path(path).name}"
            target.write_text(yaml.safe_dump(_replace(merged, paths), sort_keys=False))
            out += ["--config", str(target)]
        elif kind == "set":
            out.append(f"--{payload[0]}={paths.get(payload[1], payload[1])}")
        else:
            out.append(payload)
    return out


def build_cli(args: list[str], run: bool = True) -> AmadCLI:
    """Instantiate the CLI (``run=False`` parses and instantiates without running a subcommand).

    Runs inside two scoped settings (docs/architecture.md, "Global state"): jsonargparse accepts the
    attention-method classes (:func:`amad.config.method_subclasses`) and ``--ckpt_path`` loads them
    (:func:`amad.losses.methods.checkpoint_safe_globals`).
    """
    # We pass the (config-resolved) command line as args=; Lightning warns when sys.argv is also set.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    with tempfile.TemporaryDirectory(prefix="amad-config-") as tmp, method_subclasses(), checkpoint_safe_globals():
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
            parser_kwargs={"exit_on_error": False},
        )


def check_checkpoint_arg(args: list[str]) -> None:
    """Fail in one line, before anything is built, on a ``--ckpt_path`` that is missing or not a checkpoint."""
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--ckpt_path" and i + 1 < len(args) else None
        if arg.startswith("--ckpt_path="):
            value = arg.split("=", 1)[1]
        if value is None or value in ("last", "best", "hpc", "registry", "null"):
            continue
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path {path} does not exist (expected a .ckpt written by `amad fit`)")
        check_zip(path, "checkpoint (torch.save archive)")  # a resumed run must not start from altered bytes


def run_lightning_cli(args: list[str]) -> None:
    check_checkpoint_arg(args)
    build_cli(args, run=True)
