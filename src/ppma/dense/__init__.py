"""Dense tasks on PPMA backbones: Mask R-CNN detection (torchvision) and UPerNet segmentation.

``ppma detect train|eval|predict`` and ``ppma segment train|eval|predict`` are thin layers over
``train_detection`` / ``evaluate_detection`` / ``predict_detection`` and their segmentation twins.
Needs the ``dense`` extra (pycocotools) for detection.
"""

from .backbone import create_backbone, set_stage_checkpointing
from .detection import (
    DetectConfig,
    PPMABackboneWithFPN,
    build_mask_rcnn,
    evaluate_detection,
    predict_detection,
    train_detection,
)
from .metrics import coco_evaluate, confusion_matrix, segmentation_scores
from .segmentation import (
    SegmentConfig,
    UPerNet,
    build_upernet,
    evaluate_segmentation,
    predict_segmentation,
    train_segmentation,
)

__all__ = [
    "DetectConfig",
    "PPMABackboneWithFPN",
    "SegmentConfig",
    "UPerNet",
    "build_mask_rcnn",
    "build_upernet",
    "coco_evaluate",
    "confusion_matrix",
    "create_backbone",
    "evaluate_detection",
    "evaluate_segmentation",
    "predict_detection",
    "predict_segmentation",
    "segmentation_scores",
    "set_stage_checkpointing",
    "train_detection",
    "train_segmentation",
]
