"""``python -m rtseg``: the command-line interface (see :mod:`rtseg.cli`)."""
from __future__ import annotations

import sys

from rtseg.cli import main

sys.exit(main())
