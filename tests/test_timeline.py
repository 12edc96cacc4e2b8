"""Frame times across timestamp discontinuities (rtseg.video.timeline), FFmpeg's thresholds."""
from __future__ import annotations

import pytest

from rtseg.video.timeline import Timeline


def _placed(times: list[float], *, jumps_ahead: bool, period: float = 0.1) -> tuple[list[float], int]:
    timeline = Timeline(jumps_ahead=jumps_ahead)
    return [timeline.place(t, period) for t in times], timeline.jumps


@pytest.mark.parametrize("jumps_ahead", [False, True])
def test_a_jump_back_continues_one_period_after_the_last_frame(jumps_ahead: bool) -> None:
    placed, jumps = _placed([5.0, 5.1, 5.2, 0.0, 0.1, 5.0], jumps_ahead=jumps_ahead)
    assert placed == pytest.approx([5.0, 5.1, 5.2, 5.3, 5.4, 10.3]) and jumps == 1


def test_a_jump_ahead_counts_only_in_formats_with_discontinuities() -> None:
    times = [0.0, 0.1, 20.0, 20.1]
    assert _placed(times, jumps_ahead=False) == (pytest.approx(times), 0)  # e.g. a gap in an MP4 recording
    placed, jumps = _placed(times, jumps_ahead=True)
    assert placed == pytest.approx([0.0, 0.1, 0.2, 0.3]) and jumps == 1
    assert _placed([0.0, 9.9], jumps_ahead=True) == (pytest.approx([0.0, 9.9]), 0)  # within FFmpeg's 10 s


def test_small_jitter_back_is_left_alone() -> None:
    """Within 0.1 s back (FFmpeg's tolerance) a time is kept: a repeated or slightly early stamp is not a splice."""
    times = [1.0, 1.1, 1.05, 1.2]
    assert _placed(times, jumps_ahead=True) == (pytest.approx(times), 0)
