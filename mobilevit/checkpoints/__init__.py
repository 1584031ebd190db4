"""Checkpoint import and export for every task: the public MobileViT v1 checkpoints (mmpretrain, Apple ml-cvnets,
timm, Hugging Face) and ours, for ImageNet classification and DeepLabV3 segmentation.

One task record (:mod:`.tasks`) drives every step, so each is written once and takes ``task=``
(``"classification"``, the default, or ``"segmentation"``)::

    load_model(path)                                   # a MobileViT classifier, format and variant detected
    load_model(path, task="segmentation")              # a DeepLabV3-MobileViT
    load_checkpoint(path, task=...)                    # the remapped state dict, format, variant, class names
    detect_format(sd, task) / remap(...) / convert_state_dict(...) / to_format(...)

* :mod:`.formats`: each library's layout (our modules -> its key names), detection, the pure remaps
  (``from_cvnets``, ``from_timm``, ``from_huggingface``, ``from_mmpretrain``, ``from_ours``) and their inverse.
* :mod:`.tasks`: the task records (variant table, formats and their key markers, head).
* :mod:`.io`: reading files safely (never unpickling code), saving ours atomically.
* :mod:`.load`: file -> checked state dict -> model.
* :mod:`.errors`: one typed error per problem, each message naming the fix.

A checkpoint of the other task raises :class:`TaskMismatchError`.
"""
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptWeightsError,
    KeyMismatchError,
    NotACheckpointError,
    ShapeMismatchError,
    TaskMismatchError,
    TruncatedCheckpointError,
    UnknownFormatError,
    UnsafeCheckpointError,
    VariantMismatchError,
)
from .formats import (
    FORMATS,
    Converted,
    Format,
    Remapped,
    convert_state_dict,
    detect_format,
    from_cvnets,
    from_huggingface,
    from_mmpretrain,
    from_ours,
    from_timm,
    key_map,
    remap,
    to_format,
)
from .io import OUR_FORMAT, OUR_FORMAT_VERSION, check_finite, read_file, resolve_path, save_checkpoint, sha256_file
from .load import LoadedCheckpoint, load_checkpoint, load_model
from .tasks import CLASSIFICATION, SEGMENTATION, TASKS, Task, UnknownTaskError, get_task

__all__ = [
    "CheckpointError", "CheckpointNotFoundError", "CheckpointWriteError", "CorruptWeightsError", "KeyMismatchError",
    "NotACheckpointError", "ShapeMismatchError", "TaskMismatchError", "TruncatedCheckpointError",
    "UnknownFormatError", "UnsafeCheckpointError", "VariantMismatchError", "UnknownTaskError",
    "FORMATS", "Format", "Remapped", "Converted", "detect_format", "remap", "key_map", "convert_state_dict",
    "to_format", "from_cvnets", "from_huggingface", "from_mmpretrain", "from_ours", "from_timm",
    "OUR_FORMAT", "OUR_FORMAT_VERSION", "check_finite", "read_file", "resolve_path", "save_checkpoint",
    "sha256_file", "LoadedCheckpoint", "load_checkpoint", "load_model",
    "CLASSIFICATION", "SEGMENTATION", "TASKS", "Task", "get_task",
]
