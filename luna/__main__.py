"""``python -m luna <command>`` (and ``torchrun ... -m luna train``): the same as ``luna <command>``."""
import sys

from luna.cli import main

sys.exit(main())
