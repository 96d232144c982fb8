"""Model adapters: every family exposes its attention maps through one contract (docs/architecture.md).

>>> from amad.models import build_model, derive_student
>>> teacher = build_model("blip-vqa", "tiny")
>>> student = derive_student(teacher, num_heads=2, num_layers=1, hidden_size=32)
>>> out = student(batch, sites=("decoder.cross",))  # a batch of a DataModule (docs/architecture.md)
>>> out.attentions["decoder.cross"][0].shape[:2]  # (B, student heads)
"""

from amad.models.adapter import AttentionAdapter, decoder_inputs, task_loss
from amad.models.blip import BlipCaptionAdapter, BlipVQAAdapter
from amad.models.blip_patch import apply_blip_cross_attention_fix, remove_blip_cross_attention_fix
from amad.models.build import FAMILIES, adapter_class, build_model, model_config
from amad.models.capture import AdapterOutput
from amad.models.configs import PRESET_NAMES
from amad.models.generic import GenericAdapter
from amad.models.generic_sites import UnsupportedModelError
from amad.models.io import load_checkpoint_model, load_model, load_pretrained, save_pretrained
from amad.models.layer_map import resolve_layer_map
from amad.models.student import derive_student
from amad.models.vlt5 import VisualEmbedding, VLT5Adapter

__all__ = [
    "FAMILIES",
    "PRESET_NAMES",
    "AdapterOutput",
    "AttentionAdapter",
    "BlipCaptionAdapter",
    "BlipVQAAdapter",
    "GenericAdapter",
    "UnsupportedModelError",
    "VLT5Adapter",
    "VisualEmbedding",
    "adapter_class",
    "apply_blip_cross_attention_fix",
    "build_model",
    "decoder_inputs",
    "derive_student",
    "load_checkpoint_model",
    "load_model",
    "load_pretrained",
    "model_config",
    "remove_blip_cross_attention_fix",
    "resolve_layer_map",
    "save_pretrained",
    "task_loss",
]
