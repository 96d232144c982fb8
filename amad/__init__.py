"""amad: Attention Map Alignment Distillation for vision-language transformers.

Importing the package changes nothing outside it: no environment variables, warning filters,
transformers registries or torch serialization settings (``tests/package/test_import_side_effects.py``).
The offline defaults (``HF_HUB_OFFLINE=1``, ``WANDB_MODE=offline``) are set by the ``amad`` command
(:func:`amad.cli.set_environment_defaults`) and the Makefile; docs/architecture.md lists every
process-wide setting amad makes and where.
"""

from __future__ import annotations

__version__ = "0.1.0"
