"""Fine-tuning MobileViT (``python -m training``) with the paper's multi-scale sampler.

Built on :mod:`mobilevit` (the model, checkpoints) and :mod:`data` (datasets); neither imports it.
"""
