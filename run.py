#!/usr/bin/env python3
"""Segment a video source in real time: ``python run.py --help`` (no arguments: the demo)."""
from __future__ import annotations

import sys

from rtseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
