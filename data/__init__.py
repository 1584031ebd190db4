"""What the model is fed: photographs from installed packages, labelled folders, datasets.

It imports the model package (:mod:`mobilevit`) and nothing above it; the model imports none of it.
``photos`` (package photos, user folders, a preprocessed batch) -> ``folders`` (labels from a
folder's layout) and ``datasets`` (labelled tensors for fine-tuning); ``synthetic`` builds
calibrated synthetic models on the package photos.
"""
