"""Pipeline metrics: per-stage latency percentiles, end-to-end latency, FPS, drops, a progress bar.

Times are seconds internally and milliseconds in :meth:`Metrics.snapshot`. The
first ``warmup_frames`` frames are counted but left out of every latency and
FPS figure. FPS is (n - 1) / (t_last - t_first) over the output times of the
counted frames (n frames span n - 1 intervals): the whole run's rate, the time of any outage included.
The recent FPS counts the frames output in the last :data:`RECENT_S` seconds, a window that ends now, so that it
falls to 0 while no frame comes (a camera down, a stalled source).
"""
from __future__ import annotations

import bisect
import sys
import threading
import time
from collections import deque
from typing import Callable, TextIO

import numpy as np

STAGE_ORDER = ("decode", "preprocess", "network", "postprocess", "inference", "annotate", "output")
"""Stages in data-flow order; engines may report preprocess/network/postprocess inside inference."""
RECENT_S = 5.0
"""Seconds of output over which the recent FPS is counted (``fps_recent``, the HUD's FPS)."""


def _percentiles(samples: deque[float]) -> dict[str, float]:
    values = np.asarray(samples, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(values.mean())}


class Metrics:
    """Thread-safe record of what the pipeline did; ``snapshot()`` may be called from any thread.

    window: how many recent samples per stage are kept for percentiles (bounded memory
        for endless live runs).
    clock: the time now, in the seconds of the output times given to :meth:`record` (``time.monotonic``).
    """

    def __init__(self, *, warmup_frames: int = 5, window: int = 20_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.warmup_frames = warmup_frames
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._stages: dict[str, deque[float]] = {}
        self._e2e: deque[float] = deque(maxlen=window)
        self._recent: deque[float] = deque()  # output times of the last RECENT_S seconds' frames (live FPS)
        self._first_output: float | None = None  # output time of the run's first frame
        self._last_e2e: float | None = None
        self._first: float | None = None
        self._last: float | None = None
        self._counted = 0
        self.frames = 0
        self.dropped = 0
        self.source_reconnects = 0  # times the source came back after an outage
        self.push_reconnects = 0  # times push outputs came back after an outage (all of them together)

    def record(self, *, timings: dict[str, float], capture_time: float, output_time: float) -> None:
        """One frame written: stage durations (s), capture and output ``time.monotonic()`` (s)."""
        with self._lock:
            self.frames += 1
            self._recent.append(output_time)
            while self._recent[0] <= output_time - RECENT_S:
                self._recent.popleft()
            self._first_output = output_time if self._first_output is None else self._first_output
            self._last_e2e = output_time - capture_time
            if self.frames <= self.warmup_frames:
                return
            for stage, seconds in timings.items():
                self._stages.setdefault(stage, deque(maxlen=self._window)).append(seconds)
            self._e2e.append(output_time - capture_time)
            self._first = output_time if self._first is None else self._first
            self._last = output_time
            self._counted += 1

    def add_dropped(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    @property
    def reconnects(self) -> int:
        """Reconnections after outages: the source's and the push outputs' together."""
        return self.source_reconnects + self.push_reconnects

    def set_reconnects(self, *, source: int | None = None, push: int | None = None) -> None:
        """The reconnection counts so far of the source and (summed) of the push outputs; None: unchanged."""
        with self._lock:
            self.source_reconnects = self.source_reconnects if source is None else source
            self.push_reconnects = self.push_reconnects if push is None else push

    def _recent_fps(self, now: float) -> float | None:
        """Frames per second output in the :data:`RECENT_S` s that end at ``now`` (s): their count over the window,
        which starts at the run's first frame while the run is younger (that frame then opens it, uncounted);
        None before two frames. Call with the lock held."""
        if self._first_output is None:
            return None
        age = now - self._first_output
        if age < RECENT_S:
            return (len(self._recent) - 1) / age if len(self._recent) > 1 and age > 0 else None
        return (len(self._recent) - bisect.bisect_right(self._recent, now - RECENT_S)) / RECENT_S

    def hud(self) -> dict[str, float | int]:
        """Cheap live figures for the on-frame display: recent FPS (its window ending at the last frame written:
        the display is drawn on the frames), last end-to-end latency, drops."""
        with self._lock:
            out: dict[str, float | int] = {}
            fps = self._recent_fps(self._recent[-1]) if self._recent else None
            if fps is not None:
                out["FPS"] = fps
            if self._last_e2e is not None:
                out["latency ms"] = 1e3 * self._last_e2e
            out["dropped"] = self.dropped
            return out

    def snapshot(self) -> dict:
        """Current figures: frames, dropped, reconnects (source_reconnects + push_reconnects, each also given),
        fps, fps_recent, last_frame_age_s, latency_ms per stage.

        fps: the whole run's rate, outages included; None until two frames past warm-up have been written.
        fps_recent: frames output in the last :data:`RECENT_S` s over that time (from the first frame while the run
        is younger), a window that ends now: 0 once no frame came for that long; None before two frames.
        last_frame_age_s: seconds since the last frame was output (it grows while the source is down); None before
        the first.
        latency_ms maps each stage (and ``end_to_end``) to {p50, p95, p99, mean} in ms.
        """
        with self._lock:
            now = self._clock()
            span = (self._last or 0.0) - (self._first or 0.0)
            stages = {s: _percentiles(v) for s, v in self._stages.items() if v}
            order = {s: i for i, s in enumerate(STAGE_ORDER)}
            latency = dict(sorted(stages.items(), key=lambda kv: order.get(kv[0], len(order))))
            if self._e2e:
                latency["end_to_end"] = _percentiles(self._e2e)
            return {
                "frames": self.frames,
                "dropped": self.dropped,
                "reconnects": self.source_reconnects + self.push_reconnects,
                "source_reconnects": self.source_reconnects,
                "push_reconnects": self.push_reconnects,
                "fps": (self._counted - 1) / span if self._counted > 1 and span > 0 else None,
                "fps_recent": self._recent_fps(now),
                "last_frame_age_s": now - self._recent[-1] if self._recent else None,
                "latency_ms": latency,
            }

    def summary(self) -> str:
        """A human-readable table of the snapshot (printed at the end of a run)."""
        snap = self.snapshot()
        fps = f"{snap['fps']:.2f}" if snap["fps"] is not None else "n/a (too few frames)"
        untimed = f"  (first {self.warmup_frames} frames not timed)" if 0 < self.warmup_frames < snap["frames"] else ""
        parts = ", ".join(f"{kind} {snap[f'{kind}_reconnects']}" for kind in ("source", "push")
                          if snap[f"{kind}_reconnects"])
        reconnects = f"{snap['reconnects']} ({parts})" if parts else "0"
        lines = [
            f"frames {snap['frames']}  dropped {snap['dropped']}  reconnects {reconnects}  "
            f"end-to-end FPS {fps}{untimed}",
            f"{'stage':<12} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'stage FPS':>10}",
        ]
        for stage, p in snap["latency_ms"].items():
            rate = f"{1e3 / p['mean']:10.1f}" if stage != "end_to_end" and p["mean"] > 0 else " " * 10
            lines.append(f"{stage:<12} {p['p50']:8.1f} {p['p95']:8.1f} {p['p99']:8.1f} {rate}")
        return "\n".join(lines)


class Progress:
    """A one-line progress bar on ``stream`` (stderr), redrawn at most every ``interval`` seconds."""

    def __init__(self, total: int | None, *, stream: TextIO = sys.stderr, width: int = 30,
                 interval: float = 0.2) -> None:
        self.total, self.stream, self.width, self.interval = total, stream, width, interval
        self._t0 = time.monotonic()
        self._drawn = 0.0
        self._done = 0

    def update(self, done: int) -> None:
        self._done = done
        now = time.monotonic()
        if now - self._drawn >= self.interval:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self._done / (now - self._t0) if now > self._t0 else 0.0
        if self.total:
            filled = min(self.width, self.width * self._done // self.total)
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {self._done}/{self.total}"
        else:
            bar = f"{self._done} frames"
        self.stream.write(f"\r{bar} {rate:.1f} frames/s")
        self.stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()
