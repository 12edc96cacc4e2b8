"""``python -m rtseg``: the command-line interface (see :mod:`rtseg.cli`)."""
from __future__ import annotations

import sys

from rtseg.errors import missing_package

try:
    from rtseg.cli import main
except ModuleNotFoundError as exc:  # a dependency rtseg.cli imports at once (OpenCV, numpy …)
    if missing_package(exc) is None:
        raise
    print(f"rtseg: error: {missing_package(exc)}", file=sys.stderr)
    sys.exit(2)
sys.exit(main())
