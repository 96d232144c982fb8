"""DataModules yielding the batch dict of ``docs/architecture.md``.

Embedded, synthetic (from the easy-vqa wheel, no download): :class:`EasyVQADataModule` (task
"vqa"), :class:`ShapesCaptionDataModule` ("caption"), :class:`ShapesTranslationDataModule`
("translate"). Real formats (data not shipped): :class:`VQAv2DataModule`,
:class:`COCOKarpathyDataModule`, :class:`Multi30KDataModule`. Data cards: ``docs/datasets.md``.
"""

from amad.data.base import VisionTextDataModule
from amad.data.coco_karpathy import COCOKarpathyDataModule
from amad.data.collate import VisionTextCollator
from amad.data.dataset import Example, VisionTextDataset
from amad.data.easyvqa import EasyVQADataModule
from amad.data.multi30k import Multi30KDataModule
from amad.data.shapes import ShapesCaptionDataModule, ShapesTranslationDataModule
from amad.data.vqav2 import VQAv2DataModule

__all__ = [
    "COCOKarpathyDataModule",
    "EasyVQADataModule",
    "Example",
    "Multi30KDataModule",
    "ShapesCaptionDataModule",
    "ShapesTranslationDataModule",
    "VQAv2DataModule",
    "VisionTextCollator",
    "VisionTextDataModule",
    "VisionTextDataset",
]
