"""Quiet by default: third-party noise stays out of the user's terminal unless ``--verbose``.

Three layers, because the noise comes from three places:

* ``quiet()``: Python warnings and log records below ERROR (and, if asked, Python-level prints)
  inside one block, around a converter call;
* ``silenced()``: the process's stdout/stderr *file descriptors* pointed at ``/dev/null``, which also
  silences C++ logging (TensorFlow's CUDA-factory and cpu-feature lines, absl, XLA) and tqdm bars the
  converters draw; a no-op in verbose mode;
* ``configure()``: environment and logger levels set before the heavy imports (TensorFlow reads
  ``TF_CPP_MIN_LOG_LEVEL`` once, when it loads), then those imports done inside ``silenced()``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings

VERBOSE = False  # set by configure(); --verbose on the command lines
NOISY_LOGGERS = ("coremltools", "torchao", "torch", "tensorflow", "absl", "onnx2tf", "onnxscript", "executorch",
                 "jax", "h5py")
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR",
             "GLOG_minloglevel": "3", "TORCH_CPP_LOG_LEVEL": "ERROR", "CUDA_VISIBLE_DEVICES": ""}


@contextlib.contextmanager
def quiet(*, stdout: bool = False, stderr: bool = False):
    """Ignore Python warnings and log records below ERROR inside the block; ``stdout``/``stderr``
    also swallow what is printed there. Exceptions still propagate."""
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")
        if stdout:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        if stderr:
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


@contextlib.contextmanager
def silenced():
    """Point file descriptors 1 and 2 at ``/dev/null`` for the block (unless verbose); Python-level
    warnings and log records below ERROR are dropped too. Exceptions still propagate, and are
    reported by the caller after the descriptors are restored."""
    if VERBOSE:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with quiet():
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def configure(verbose: bool = False, preload: tuple[str, ...] = ()) -> None:
    """Set the process up for quiet (or verbose) runs, then import ``preload`` modules silently.

    Call it first thing in a command line's ``main``, before anything imports TensorFlow, coremltools or
    torchao. ``preload`` lists the heavy modules the run will need (their import-time noise is the worst).
    """
    global VERBOSE
    VERBOSE = verbose
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    import importlib

    with silenced():
        for module in preload:
            try:
                importlib.import_module(module)
            except ImportError:  # a missing optional runtime is reported where it is needed
                pass
    for name in NOISY_LOGGERS:  # some libraries reset their level when imported
        logging.getLogger(name).setLevel(logging.ERROR)
