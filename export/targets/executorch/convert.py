"""ExecuTorch export: ``torch.export`` -> edge dialect -> a delegated ``.pte`` program.

``convert`` is this target's entry in the registry (``export.config``); call it through
``export.convert``. Programs are made in ``program.py``, read back and run in ``runner.py``. Precisions:

* ``fp32``: the whole graph lowered to the XNNPACK backend (CPU, Android and iOS);
* ``int8``: PT2E post-training quantization with the XNNPACK quantizer (symmetric int8,
  per-channel weights, calibrated on real photos) of the layers its recipe quantizes (``program.int8_filter``), or with
  ``--int8-budget`` of the layers searched for this checkpoint (``search.py``), then lowered to XNNPACK;
* ``coreml-fp16``: the whole graph lowered to the Core ML backend (an ML program, fp16, iOS 17).
  The ``.pte`` is produced anywhere; it runs only where ExecuTorch has its Core ML backend (Apple
  devices). Off Apple, ``runner.runner`` extracts the Core ML program the ``.pte`` carries and runs it
  in the Core ML reference executor (``export.targets.coreml.reference``), so it is validated on Linux too.

The registry entry's model rewrites (``mobilevit.rewrites``) and ``bmm`` attention put every op in a
form XNNPACK delegates, so the program is one delegate call and no op runs on ExecuTorch's portable
kernels; ``runner.inspect_pte`` reads that back from the ``.pte`` itself, for the manifest and tests.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from .program import ExecuTorchOptions, to_pte


def convert(model: torch.nn.Module, precisions, workdir: Path, *, sizes: tuple[int, ...],
            calibration: np.ndarray | None, options: ExecuTorchOptions) -> dict[str, Path]:
    """This target's converter (see ``export.config.TargetConfig.converter``); with ``options.int8_budget``, the
    int8 program's layers are searched for this checkpoint (``search.search_int8``)."""
    search = options.int8_budget is not None
    made = {}
    for p in sorted(precisions, key=lambda p: search and p == "int8"):  # a search last: it reuses the fp32 program
        path = Path(workdir) / f"model_{p}.pte"
        if p == "int8" and search:
            from ...publish import write_int8_search
            from .search import search_int8

            with tempfile.TemporaryDirectory(prefix="executorch-search-", dir=workdir) as scratch:
                made[p], searched = search_int8(model, calibration, options.int8_budget, Path(scratch), sizes[0],
                                                path, labels=options.heldout_labels, objective=options.int8_objective,
                                                fp32=made.get("fp32"))
            write_int8_search(made[p], searched)  # the pipeline puts it in the manifest
        else:
            made[p] = to_pte(model, p, path, size=sizes[0], calibration=calibration, options=options)
    return {p: made[p] for p in precisions}
