"""Checkpoint import (moved into a package; split by task record in the next commit)."""
from .formats import *  # noqa: F401,F403
