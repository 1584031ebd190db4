"""Reference PyTorch MobileViT v1: configs, model, patch strategies, checkpoints, preprocessing."""
from .config import DEFAULT_SIZE, VARIANTS, MobileViTConfig, get_config
from .model import InputSizeError, MobileViT, build, count_macs, count_params
from .patches import STRATEGIES, get_strategy

__all__ = ["DEFAULT_SIZE", "VARIANTS", "MobileViTConfig", "get_config", "MobileViT", "build", "count_params",
           "count_macs", "InputSizeError", "STRATEGIES", "get_strategy"]
