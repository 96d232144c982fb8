"""The scene-attribute stage of a teacher's pre-training, trained once per image tower and shared.

``pretrain.attributes`` (:class:`~amad.lit.attributes.SceneAttributeModule`) teaches a teacher's image
encoder to read generated scenes (shape, colour, size, position). What it learns depends only on the
tower -- its architecture, its initialisation, the stage's settings and the images' size and
normalisation -- not on the task that follows: the BLIP VQA, captioning and translation teachers have
the same ViT, the three VL-T5 teachers the same visual embedding and encoder. With ``shared: true`` the
stage is trained on a **canonical** model of the family group (built from the tower's settings alone
and seeded by the stage, so it does not matter which teacher asks first), its tower weights are kept
under ``$AMAD_CACHE/teacher_stages/tower-<group>-<fingerprint>/tower.pt``, and every teacher whose
tower has that fingerprint loads them instead of training the stage again.

Which parameters are "the tower" (:data:`TOWER_PREFIXES`): BLIP's ``vision_model``; VL-T5's visual
embedding and its encoder blocks (the encoder reads the visual tokens; the token embedding, tied to the
decoder and sized by each task's vocabulary, is not part of it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from amad.artefacts import atomic_write_bytes, atomic_write_json, check_zip, read_json, set_aside
from amad.compare.config import fingerprint
from amad.paths import cache_root

#: family group -> the state-dict prefixes of its image tower.
TOWER_PREFIXES: dict[str, tuple[str, ...]] = {
    "blip": ("model.vision_model.",),
    "vlt5": ("visual.", "model.encoder.block.", "model.encoder.final_layer_norm."),
}
#: family group -> the family the shared stage is trained on.
CANONICAL_FAMILY = {"blip": "blip-vqa", "vlt5": "vlt5"}
#: BLIP model settings that change only the text towers: left out of the canonical build and the key.
_BLIP_TEXT_ONLY = ("text_", "vocab_size", "max_position_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")


def family_group(family: str) -> str:
    """``blip`` for ``blip-vqa`` / ``blip-caption``, ``vlt5`` for ``vlt5``."""
    return "vlt5" if family == "vlt5" else "blip"


def tower_build_kwargs(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The :func:`~amad.models.build_model` settings of the canonical model (family and text-only
    settings dropped for BLIP; every structural setting kept for VL-T5, whose encoder is the tower)."""
    group = family_group(model_cfg["family"])
    kwargs = {k: v for k, v in model_cfg.items() if k != "family"}
    if group == "blip":
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith(_BLIP_TEXT_ONLY)}
    return kwargs


def tower_fingerprint(model_cfg: dict[str, Any], stage: dict[str, Any], seed: int, precision: str, images: dict) -> str:
    """Hash of what the shared stage's result depends on: group, tower settings, stage, seed, precision,
    image size and normalisation."""
    group = family_group(model_cfg["family"])
    return fingerprint(
        {
            "group": group,
            "tower": tower_build_kwargs(model_cfg),
            "stage": {k: v for k, v in stage.items() if k != "shared"},
            "seed": seed,
            "precision": precision,
            "images": images,
        }
    )


def tower_state(model: torch.nn.Module, group: str) -> dict[str, torch.Tensor]:
    """The tower's entries of ``model.state_dict()`` (cloned, on the CPU)."""
    prefixes = TOWER_PREFIXES[group]
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def load_tower(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy a shared tower into ``model``; ValueError naming ``source`` when keys or shapes differ."""
    own = model.state_dict()
    missing = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if missing or wrong or not state:
        raise ValueError(
            f"{source}: the shared tower does not fit this teacher "
            f"({len(missing)} unknown keys, e.g. {missing[:2]}; {len(wrong)} of another shape, e.g. {wrong[:2]})"
        )
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


def shared_attribute_stage(
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    stage: dict[str, Any],
    dm: Any,
    precision: str,
    seed: int,
    train: Callable[..., dict[str, Any]],
    log=print,
) -> dict[str, Any]:
    """Give ``model`` the shared scene-attribute tower (training it once if no teacher has yet).

    Args:
        model: the teacher's adapter; its tower parameters are overwritten.
        model_cfg: the teacher's ``model:`` settings (``family``, ``preset``, overrides).
        stage: the ``pretrain.attributes`` settings.
        dm: the teacher's DataModule (its ``image_size`` and ``normalize`` make the scenes' pixels).
        precision: Lightning precision of the stage.
        seed: the recipe's seed (the canonical model is built and trained under it).
        train: the stage itself, ``train(model, stage, dm, precision, seed, log) -> record``
            (:func:`amad.compare.teacher.attribute_stage`).
        log: progress printer.

    Returns:
        The stage record (``stage``, ``steps``, ``train_time_s``, ``held_out``, ``tower``: the cache
        key; ``shared_from_cache: true`` when the tower was loaded rather than trained here).
    """
    from amad.models import build_model

    group = family_group(model_cfg["family"])
    images = {"image_size": dm.image_size, "normalize": getattr(dm, "normalize", None)}
    key = f"tower-{group}-{tower_fingerprint(model_cfg, stage, seed, precision, images)}"
    folder = cache_root() / "teacher_stages" / key
    weights, record_file = folder / "tower.pt", folder / "record.json"
    if weights.is_file() and record_file.is_file():
        try:
            check_zip(weights)  # torch.load does not check the archive's CRCs
            state = torch.load(weights, map_location="cpu", weights_only=True)
            record = read_json(record_file)
            load_tower(model, state, weights)
            log(f"teacher pretrain.attributes: shared tower {key} (trained once, reused)")
            return {**record, "tower": key, "shared_from_cache": True}
        except Exception as err:  # torn or foreign file (any unpickling error): set aside, train again
            set_aside(folder, f"{weights.name} unreadable: {type(err).__name__}: {err}", log)
    canonical = build_model(CANONICAL_FAMILY[group], seed=seed, **tower_build_kwargs(model_cfg))
    record = train(canonical, stage, dm, precision, seed, log)
    state = tower_state(canonical, group)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(weights, buffer.getvalue())
    atomic_write_json(record_file, record)  # written last: a folder without it is an unfinished stage
    load_tower(model, state, weights)
    return {**record, "tower": key}
