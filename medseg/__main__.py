"""``python -m medseg`` (and ``torchrun -m medseg``) runs the command-line interface."""

import sys

from medseg.cli.main import main

sys.exit(main())
