"""``python -m training``: fine-tune (see :mod:`training.finetune`)."""
import sys

from .finetune import main

sys.exit(main())
