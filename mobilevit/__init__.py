"""Reference PyTorch MobileViT v1: configs, model, patch strategies, checkpoints, preprocessing."""
from .config import DEFAULT_SIZE, SEGMENTATION_VARIANTS, VARIANTS, MobileViTConfig, SegmentationConfig, get_config
from .model import InputSizeError, MobileViT, build, count_macs, count_params
from .patches import STRATEGIES, get_strategy
from .segmentation import MobileViTSegmentation, build_segmentation

__all__ = ["DEFAULT_SIZE", "VARIANTS", "MobileViTConfig", "get_config", "MobileViT", "build", "count_params",
           "count_macs", "InputSizeError", "STRATEGIES", "get_strategy", "SEGMENTATION_VARIANTS", "SegmentationConfig",
           "MobileViTSegmentation", "build_segmentation"]
