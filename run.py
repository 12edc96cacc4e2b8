#!/usr/bin/env python3
"""Segment a video source in real time: ``python run.py --help`` (no arguments: the demo)."""
from __future__ import annotations

import runpy

if __name__ == "__main__":
    runpy.run_module("rtseg", run_name="__main__")
