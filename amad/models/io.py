"""Saving and loading adapters: ``save_pretrained`` directories, plain HF checkpoints and amad ``.ckpt`` files.

A ``save_pretrained`` directory holds the HF files (``config.json``, ``model.safetensors``),
``amad_adapter.json`` (family, adapter settings, special ids), ``amad_extra.safetensors`` (modules
outside the HF model, e.g. VL-T5's visual embedding) and the tokenizer files. ``amad_adapter.json`` is
written last and records the size and SHA-256 of every other file (``files``); :func:`load_pretrained`
checks them where recorded, and checks every folder's JSON files and safetensors headers
(:func:`check_pretrained_dir`): a damaged folder is one error naming the file, never a library traceback.

An amad ``.ckpt`` (written by ``amad fit``) carries, besides Lightning's ``state_dict``, what rebuilding
its trainable model needs: :data:`MODEL_CONFIG_KEY` (the adapter's ``config_dict()``),
:data:`MODEL_PREFIX_KEY` (that model's ``state_dict`` prefix) and :data:`TOKENIZER_KEY` (the tokenizer
as a ``tokenizers`` JSON string: word-level vocabularies are built from data, and a checkpoint must not
depend on rebuilding them identically). :mod:`amad.lit.checkpoint` writes them.

Nothing is downloaded: hub ids resolve only from the user's local Hugging Face cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from amad.artefacts import (
    DamagedFile,
    atomic_write_text,
    check_digests,
    check_safetensors,
    check_zip,
    folder_digests,
    read_json,
)
from amad.models.adapter import AttentionAdapter
from amad.models.build import adapter_class, build_model
from amad.models.tokenizers import load_tokenizer, word_tokenizer_from_vocab

ADAPTER_FILE = "amad_adapter.json"
EXTRA_WEIGHTS_FILE = "amad_extra.safetensors"
MODEL_CONFIG_KEY = "amad_model_config"
MODEL_PREFIX_KEY = "amad_model_prefix"
TOKENIZER_KEY = "amad_tokenizer"
#: a comparison's teacher record (:mod:`amad.compare.teacher_files`), when the folder is one
TEACHER_RECORD = "teacher.json"

_ARCHITECTURES = {
    "BlipForQuestionAnswering": "blip-vqa",
    "BlipForConditionalGeneration": "blip-caption",
    "T5ForConditionalGeneration": "vlt5",
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")


# ----------------------------------------------------------------------------- save_pretrained dirs
def save_pretrained(adapter: AttentionAdapter, path: str | Path) -> Path:
    """Write ``adapter`` as a ``save_pretrained`` directory (see the module docstring); returns ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    adapter.model.save_pretrained(path)
    extra = adapter.extra_state_dict()
    if extra:
        save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(path / EXTRA_WEIGHTS_FILE))
    if adapter.tokenizer is not None:
        adapter.tokenizer.save_pretrained(str(path))
    meta = {
        "family": adapter.family,
        "extra_config": adapter.extra_config(),
        "bos_token_id": adapter.bos_token_id,
        "eos_token_id": adapter.eos_token_id,
        "pad_token_id": adapter.pad_token_id,
        # last: the other files are complete when their digests are written
        # (only the files written here: a user's other files in the folder are theirs to change)
        "files": {
            name: d
            for name, d in folder_digests(path, skip=(ADAPTER_FILE,)).items()
            if before.get(name) != (path / name).stat().st_mtime_ns
        },
    }
    atomic_write_text(path / ADAPTER_FILE, json.dumps(meta, indent=2) + "\n")
    return path


def check_pretrained_dir(folder: str | Path, weights: bool = True) -> dict[str, Any]:
    """Check a model folder before loading it; returns its ``amad_adapter.json`` (or {}).

    Every JSON file must parse, every safetensors file must have a complete header, the weights must be
    there (unless ``weights=False``), and the files listed in ``amad_adapter.json`` must have their
    recorded size and SHA-256 (those listed in ``teacher.json`` instead, where a teacher's record has them).

    Raises:
        DamagedFile: naming the first damaged file and what is wrong with it.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise DamagedFile(folder / "config.json", "missing: not a folder written by save_pretrained")
    docs = {p.name: read_json(p, object) for p in sorted(folder.glob("*.json"))}
    meta = docs.get(ADAPTER_FILE, {})
    if not isinstance(meta, dict):
        raise DamagedFile(folder / ADAPTER_FILE, "not a JSON object")
    # a comparison's teacher records every file's digest in teacher.json (covering amad_adapter.json,
    # and the weights of a teacher saved before amad_adapter.json held digests)
    record = docs.get(TEACHER_RECORD)
    if isinstance(record, dict) and record.get("files"):
        check_digests(folder, record["files"], TEACHER_RECORD)
    else:
        check_digests(folder, meta.get("files") or {}, ADAPTER_FILE)
    for p in sorted(folder.glob("*.safetensors")):
        check_safetensors(p)
    if weights:
        check_weights_present(folder)
    return meta


def check_weights_present(folder: Path) -> None:
    """:class:`DamagedFile` unless ``folder`` holds the HF model's weights (safetensors or a .bin)."""
    if not any(p.name != EXTRA_WEIGHTS_FILE for p in folder.glob("*.safetensors")) and not any(
        folder.glob("pytorch_model*.bin")
    ):
        raise DamagedFile(folder / "model.safetensors", "missing: the folder has no model weights")


def resolve_local_path(path: str | Path) -> Path:
    """A local directory for ``path``: the directory itself, or a hub id's snapshot in the local HF cache.

    Raises:
        FileNotFoundError: neither exists; the message says to pass a local path (no downloads here).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise NotADirectoryError(f"{path} is a file; expected a directory written by save_pretrained")
    name = str(path)
    if not name.startswith((".", "/", "~")) and name.count("/") <= 1:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception:  # not cached (or not a valid repo id)
            pass
    raise FileNotFoundError(
        f"{name!r} is neither a local directory nor a model in the local Hugging Face cache. Hub downloads "
        "are off (HF_HUB_OFFLINE=1): pass a local path to a folder written by save_pretrained "
        "(e.g. a downloaded Salesforce/blip-vqa-base or t5-base)."
    )


def load_pretrained(
    path: str | Path, *, family: str | None = None, tokenizer: Any = None, **extra: Any
) -> AttentionAdapter:
    """Load an adapter saved by :func:`save_pretrained`, or wrap a plain HF checkpoint directory.

    Args:
        path: a local directory, or a hub id already in the local HF cache.
        family: needed only when the directory has no ``amad_adapter.json`` and its ``config.json``
            architecture does not say (``BlipForQuestionAnswering`` → ``blip-vqa``, etc.).
        tokenizer: overrides the directory's tokenizer files.
        **extra: adapter settings (VL-T5: ``image_size``, ``patch_size``, ``visual_feat_dim``...) that
            override the saved ones — useful when wrapping a plain T5 checkpoint.

    A plain T5 checkpoint gets a freshly initialised visual embedding, listed in ``adapter.init_report``.
    """
    local = resolve_local_path(path)
    meta = check_pretrained_dir(local, weights=False)
    if family is None:
        family = meta.get("family")
    if family is None:
        archs = read_json(local / "config.json").get("architectures") or []
        family = next((_ARCHITECTURES[a] for a in archs if a in _ARCHITECTURES), None)
        if family is None:
            raise ValueError(f"cannot tell the model family of {local} (architectures {archs}); pass family=")
    cls = adapter_class(family)
    check_weights_present(local)
    model = cls.load_hf(str(local))
    if tokenizer is None and any((local / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer = load_tokenizer(local)
    adapter = cls(model, tokenizer, **{**meta.get("extra_config", {}), **extra})
    expected = adapter.extra_state_dict()
    weights = local / EXTRA_WEIGHTS_FILE
    if weights.is_file():
        from safetensors.torch import load_file

        state = load_file(str(weights))
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{weights} does not match the adapter: missing {missing}, unexpected {unexpected}")
        adapter.load_state_dict(state, strict=False)
    elif expected:
        adapter.init_report = {
            "random": sorted(expected),
            "note": f"{local} has no {EXTRA_WEIGHTS_FILE}: the adapter's own modules are freshly initialised",
        }
    return adapter


# ----------------------------------------------------------------------------- amad .ckpt files
def tokenizer_to_json(tokenizer: Any) -> str | None:
    """Serialise a fast tokenizer (None when there is none or it is not a fast tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return None if backend is None else backend.to_str()


def tokenizer_from_json(text: str) -> Any:
    """Rebuild a word-level tokenizer written by :func:`tokenizer_to_json`."""
    return word_tokenizer_from_vocab(json.loads(text)["model"]["vocab"])


def load_checkpoint_model(path: str | Path) -> AttentionAdapter:
    """Rebuild the trainable model (student, or fine-tuned model) of an amad ``.ckpt``.

    Raises:
        FileNotFoundError: no file at ``path``.
        DamagedFile: the file is cut short or altered (a ``ValueError`` naming it).
        ValueError: the file is not an amad checkpoint (or not readable), or its weights do not fit its config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    check_zip(path, "checkpoint (torch.save archive)")  # torch.load would take altered bytes as weights
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated / not a torch file
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or MODEL_CONFIG_KEY not in ckpt:
        raise ValueError(
            f"{path} is not an amad checkpoint (no '{MODEL_CONFIG_KEY}'); expected a .ckpt written by "
            "`amad fit` with FineTuneModule or DistillationModule"
        )
    tokenizer = tokenizer_from_json(ckpt[TOKENIZER_KEY]) if TOKENIZER_KEY in ckpt else None
    model = build_model(**ckpt[MODEL_CONFIG_KEY], tokenizer=tokenizer)
    prefix = ckpt[MODEL_PREFIX_KEY]
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match its own model config: {err}") from err
    return model


def load_model(path: str | Path) -> AttentionAdapter:
    """Load a model adapter from an amad ``.ckpt`` or a ``save_pretrained`` directory.

    Raises:
        FileNotFoundError: ``path`` does not exist; the message names the two accepted forms.
    """
    path = Path(path)
    if path.is_dir():
        return load_pretrained(path)
    if path.is_file():
        return load_checkpoint_model(path)
    raise FileNotFoundError(
        f"model path {path} does not exist: expected a directory written by `amad export` / "
        "`save_pretrained`, or a .ckpt written by `amad fit`. Hub ids cannot be downloaded here."
    )
