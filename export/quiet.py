"""One way to silence a converter while it runs (its warnings, log records and, if asked, its prints)."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings


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
