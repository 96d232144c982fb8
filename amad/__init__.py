"""amad: Attention Map Alignment Distillation for vision-language transformers.

Importing the package sets safe offline defaults *only where the user has not chosen*:
``HF_HUB_OFFLINE=1`` (a hub id fails in seconds instead of retrying) and ``WANDB_MODE=offline``
(runs land under the save dir and ``wandb sync`` uploads them later). A run never hangs on the
network.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
