"""Reference PyTorch MobileViT v1: configs, model, patch strategies, checkpoints, preprocessing."""
from .config import VARIANTS, MobileViTConfig, get_config
from .model import InputSizeError, MobileViT, build, count_macs, count_params
from .patches import STRATEGIES, get_strategy

__all__ = ["VARIANTS", "MobileViTConfig", "get_config", "MobileViT", "build", "count_params",
           "count_macs", "InputSizeError", "STRATEGIES", "get_strategy"]
