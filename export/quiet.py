"""Quiet by default: third-party noise stays out of the user's terminal unless ``--verbose``.

Three layers, because the noise comes from three places:

* ``quiet()``: Python warnings and log records below ERROR (and, if asked, Python-level prints)
  inside one block, around a converter call;
* ``silenced()``: the process's stdout/stderr *file descriptors* pointed at ``/dev/null``, which also
  silences C++ logging (TensorFlow's CUDA-factory and cpu-feature lines, absl, XLA) and tqdm bars the
  converters draw; a no-op in verbose mode;
* ``configure()``: environment and logger levels set before the heavy imports (TensorFlow reads
  ``TF_CPP_MIN_LOG_LEVEL`` once, when it loads), then those imports done inside ``silenced()``.

Our own progress bars (``progress``, ``ticking``) draw on the terminal kept aside before any silencing,
so they show while a converter is silenced; only when that terminal is a TTY (a log file gets none).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
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


_TERMINAL = None  # a duplicate of the stderr the user sees, taken before fd 2 is silenced


def terminal():
    """The user's stderr as a file, kept aside from the first call on (before :func:`silenced` redirects fd 2)."""
    global _TERMINAL
    if _TERMINAL is None:
        try:
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # a stand-in stream (pytest's capsys): no terminal; not kept
            return sys.stderr
        _TERMINAL = os.fdopen(os.dup(fd), "w", buffering=1)
    return _TERMINAL


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", prefix: str = "export",
             enabled: bool | None = None, **kwargs):
    """A tqdm bar with ETA on the user's terminal (``[prefix] desc``); off unless that is a TTY or ``enabled``."""
    from tqdm import tqdm

    out = terminal()
    show = out.isatty() if enabled is None else enabled
    return tqdm(iterable, total=total, desc=f"[{prefix}] {desc}", unit=unit, file=out, disable=not show,
                leave=False, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def ticking(desc: str, *, prefix: str = "export", enabled: bool | None = None):
    """An elapsed-time bar for one long call with no steps of its own to count (a converter run)."""
    bar = progress(desc=desc, prefix=prefix, enabled=enabled, bar_format="{desc}: {elapsed}")
    stop = threading.Event()

    def tick():
        while not stop.wait(1.0):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
        bar.close()


@contextlib.contextmanager
def silenced():
    """Point file descriptors 1 and 2 at ``/dev/null`` for the block (unless verbose); Python-level
    warnings and log records below ERROR are dropped too. Exceptions still propagate, and are
    reported by the caller after the descriptors are restored."""
    if VERBOSE:
        yield
        return
    terminal()  # keep the user's stderr for our progress bars before it is pointed away
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
