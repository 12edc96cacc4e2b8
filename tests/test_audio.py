"""``--audio``: the source's sound in the MP4 recording, in sync with the annotated video.

Inputs are made by the ffmpeg command line (MPEG-TS as it writes it: clocks starting at ~1.4 s, ADTS AAC), recorded
by the real parts (:class:`FileSource` frames into :class:`Mp4Sink`), and the recording's audio decoded with PyAV.
The sound is a 220 Hz tone with a 3 kHz marker from :data:`MARK_AT` s of the source's clock on: where the marker
begins in the recording shows where the audio was placed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from rtseg.errors import SinkError
from rtseg.video.sink_mp4 import Mp4Sink
from rtseg.video.sources_av import FileSource
from servers.helpers import tiny_weights

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI (apt-get install ffmpeg)")

REPO = Path(__file__).resolve().parents[1]
#: Source time (s, from the start of the ffmpeg inputs) where the 3 kHz marker begins (it lasts 0.2 s).
MARK_AT = 2.5
MARK_HZ = 3000.0
#: About one audio frame (AAC: 1024 samples at 48 kHz, 21 ms; MP2: 24 ms): audio is placed packet by packet.
TOLERANCE_S = 0.025


def _make(path: Path, *, audio_codec: str, seconds: float = 5.0, fps: int = 10, video_delay: float = 0.0,
          audio_delay: float = 0.0, channels: int = 1) -> Path:
    """A ``seconds`` long testsrc video at ``fps`` beside the marked tone (48 kHz, ``channels``, ``audio_codec``), the
    video delayed by ``video_delay`` s on the file's clock (its first frame shows at the audio's ``video_delay`` s), or
    the audio by ``audio_delay`` s (its marker then plays at :data:`MARK_AT` + ``audio_delay`` s of the file's clock);
    both end together."""
    tone = f"0.5*sin(2*PI*220*t)+if(between(t,{MARK_AT},{MARK_AT + 0.2}),0.5*sin(2*PI*{MARK_HZ:g}*t),0)"
    return _ffmpeg(path, "-itsoffset", f"{video_delay:g}", "-f", "lavfi", "-i",
                   f"testsrc=size=96x64:rate={fps}:duration={seconds:g}", "-itsoffset", f"{audio_delay:g}",
                   "-f", "lavfi", "-i", f"aevalsrc='{tone}':s=48000:d={seconds + video_delay - audio_delay:g}",
                   "-c:a", audio_codec, "-ac", str(channels))


def _ffmpeg(path: Path, *inputs_and_options: str) -> Path:
    """``path`` made by the ffmpeg command line from ``inputs_and_options``, its video H.264 yuv420p."""
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *inputs_and_options,
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True, timeout=60)
    return path


def _record(source: Path, out: Path, start: float = 0.0) -> None:
    """Record every frame of ``source`` from ``start`` s (as ``--start``) with its audio, as the CLI does."""
    frames = FileSource(str(source), start=start)
    sink = Mp4Sink(out, fps_hint=frames.fps, audio_from=str(source))
    try:
        for frame in frames:
            sink.write(frame, None, frame.image)
    except BaseException:
        sink.abort()
        raise
    finally:
        frames.close()
    sink.close()


def _audio(path: Path) -> tuple[float, np.ndarray, int]:
    """(output time of the first decoded sample in s, the samples (N,) float mixed to mono, sample rate) of the
    first audio track of ``path``."""
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    samples = np.concatenate([f.to_ndarray().reshape(len(f.layout.channels), -1).mean(axis=0) for f in frames])
    return float(frames[0].pts * frames[0].time_base), samples, frames[0].sample_rate


def _marker_onsets(path: Path) -> list[float]:
    """Output times (s) where a :data:`MARK_HZ` marker begins in ``path``'s audio: each 5 ms window whose energy at
    that frequency is over half the loudest window's, after one that is not (or first)."""
    start, samples, rate = _audio(path)
    width = rate // 200
    windows = samples[: len(samples) // width * width].reshape(-1, width)
    energy = np.abs(windows @ np.exp(-2j * np.pi * MARK_HZ * np.arange(width) / rate))
    loud = np.concatenate([[False], energy > 0.5 * energy.max()])
    return [start + int(i) * width / rate for i in np.flatnonzero(loud[1:] & ~loud[:-1])]


def _marker_onset(path: Path) -> float:
    """Output time (s) where the first :data:`MARK_HZ` marker begins in ``path``'s audio (:func:`_marker_onsets`)."""
    return _marker_onsets(path)[0]


def _ends(path: Path) -> tuple[float, float]:
    """(end of the video track, end of the decoded audio) of ``path``, in s of output time."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video_end = float((video.start_time + video.duration) * video.time_base)
    start, samples, rate = _audio(path)
    return video_end, start + len(samples) / rate


@pytest.mark.parametrize("name,codec,delay,start,mark", [
    ("late_video.mkv", "libopus", 1.0, 0.0, MARK_AT - 1.0),  # the video starts 1 s after the audio: output 0 is it
    ("clip.ts", "mp2", 0.0, 0.0, MARK_AT),  # MPEG-TS: both clocks start at ~1.4 s, not 0
    ("clip.ts", "mp2", 0.0, 1.0, MARK_AT - 1.0),  # --start 1: output 0 is source time 1 s, as ffmpeg -ss 1
    ("clip.ts", "aac", 0.0, 1.0, MARK_AT - 1.0),  # ADTS AAC, copied into MP4 through aac_adtstoasc
    ("clip.mkv", "libopus", 0.0, 1.5, MARK_AT - 1.5),  # a format sought to --start (copied)
    ("clip.mp4", "aac", 0.0, 1.5, MARK_AT - 1.5),
    ("late_audio.mkv", "libopus", -1.0, 0.0, MARK_AT + 1.0),  # the audio starts 1 s after the video
    ("late_audio.ts", "aac", -1.0, 0.0, MARK_AT + 1.0),
    ("late_audio.ts", "mp2", -1.0, 0.0, MARK_AT + 1.0),  # (transcoded for its codec too)
    ("late_audio.mkv", "libopus", -1.0, 0.5, MARK_AT + 0.5),  # ... after --start 0.5 too
])
def test_the_audio_is_placed_at_its_time_after_the_first_frame(tmp_path, name, codec, delay, start, mark):
    """Output time 0 is the first recorded frame; a sound at source time s plays at s minus that frame's source time
    (both on the file's clock), and the audio runs to the end of the last frame. ``delay`` < 0: the audio starts
    that much after the video. The marker used to land where its raw timestamp put it (2.49 s instead of 1.5 s in
    the MKV; TS: 0.58 s late with --start), the audio of a TS was cut short, ADTS AAC stopped the recording ("write
    failed (Operation not permitted); free space ..."), audio that starts late played from output time 0 (its
    marker 1 s early: the fragmented MP4 keeps no edit list)."""
    source = _make(tmp_path / name, audio_codec=codec, video_delay=max(delay, 0.0), audio_delay=max(-delay, 0.0))
    out = tmp_path / "rec.mp4"
    _record(source, out, start)
    assert abs(_marker_onset(out) - mark) <= TOLERANCE_S, _marker_onset(out)
    first, _, _ = _audio(out)
    video_end, audio_end = _ends(out)
    assert abs(first) <= TOLERANCE_S and abs(audio_end - video_end) <= TOLERANCE_S, (first, audio_end, video_end)


@pytest.mark.parametrize("name,start", [("clip.mp4", 0.0), ("clip.ts", 1.0), ("clip.mkv", 1.5)])
def test_mp3_is_copied_in_sync(tmp_path, name, start):
    """MP3 was always transcoded to AAC (a needless lossy re-encode): the copy check took the decoder's name,
    ``mp3float``. Its packets are copied now, and the encoder's delay (1105 samples of LAME's priming, which the
    source's timestamps leave out: MP4's edit list, MPEG-TS's and Matroska's earlier audio start) does not move the
    sound: the marker, the audio's start and its end (as ffprobe reads them) are where the video has them."""
    source, out = _make(tmp_path / name, audio_codec="libmp3lame"), tmp_path / "rec.mp4"
    _record(source, out, start)
    with av.open(str(source)) as container:
        source_packets = {bytes(p) for p in container.demux(audio=0) if p.size}
    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.codec.canonical_name == "mp3"
        copied = [bytes(p) for p in container.demux(audio=0) if p.size]
    assert copied and all(p in source_packets for p in copied)
    assert abs(_marker_onset(out) - (MARK_AT - start)) <= TOLERANCE_S, _marker_onset(out)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,start_time,duration",
                            "-of", "csv=p=0", str(out)], capture_output=True, text=True, check=True, timeout=60)
    spans = {kind: (float(begin), float(begin) + float(length))  # (start, end) s of each track
             for kind, begin, length in (line.split(",") for line in probe.stdout.split())}
    (video_start, video_end), (audio_start, audio_end) = spans["video"], spans["audio"]
    assert video_start == 0.0 and abs(audio_start) <= TOLERANCE_S, (video_start, audio_start)
    assert abs(audio_end - video_end) <= TOLERANCE_S, (video_end, audio_end)


def test_the_audio_runs_to_the_end_of_the_last_frame(tmp_path):
    """At 1 fps the last frame lasts a second: its sound is kept (4 s of video had 3.02 s of audio: it stopped
    where the last frame begins)."""
    source, out = _make(tmp_path / "slow.mp4", audio_codec="aac", seconds=4.0, fps=1), tmp_path / "rec.mp4"
    _record(source, out)
    video_end, audio_end = _ends(out)
    assert video_end == pytest.approx(4.0) and abs(audio_end - video_end) <= TOLERANCE_S, audio_end


def test_the_audio_runs_to_the_end_of_a_last_frame_that_lasts_longer_than_the_spacing_before_it(tmp_path):
    """The last frame's ``Frame.duration`` (a GIF's or a variable-rate file's last frame may last far longer than the
    frames before it) is where the video and the audio end (both ended 0.1 s after it: the spacing of the last
    two, 1 / fps)."""
    source, out = _make(tmp_path / "clip.mkv", audio_codec="libopus", seconds=3.0), tmp_path / "rec.mp4"
    with FileSource(str(source), end=1.0) as frames:
        kept = list(frames)
    sink = Mp4Sink(out, fps_hint=frames.fps, audio_from=str(source))
    for frame in kept[:-1] + [replace(kept[-1], duration=1.5)]:
        sink.write(frame, None, frame.image)
    sink.close()
    video_end, audio_end = _ends(out)
    assert video_end == pytest.approx(0.9 + 1.5) and abs(audio_end - video_end) <= TOLERANCE_S, (video_end, audio_end)


def test_audio_at_a_rate_aac_does_not_take_is_resampled(tmp_path):
    """192 kHz PCM (MP4 cannot hold PCM: it is converted to AAC, whose encoder refuses 192 kHz) is recorded at
    96 kHz (was "encoding the video failed (Invalid argument)")."""
    source = _ffmpeg(tmp_path / "hi.mkv", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=10:duration=1", "-f", "lavfi",
                     "-i", "sine=duration=1:sample_rate=192000", "-c:a", "pcm_s16le")
    out = tmp_path / "rec.mp4"
    _record(source, out)
    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.sample_rate == 96000
    video_end, audio_end = _ends(out)
    assert abs(audio_end - video_end) <= TOLERANCE_S, audio_end


def test_ts_with_aac_is_recorded_with_its_sound(tmp_path):
    """``rtseg --source clip.ts --output rec.mp4 --audio``, the ADTS AAC of an MPEG-TS file: exit 0 and the sound in
    the recording (was exit 2: "write failed (Operation not permitted); free space or choose another path")."""
    source, out = _make(tmp_path / "clip.ts", audio_codec="aac", seconds=3.0), tmp_path / "rec.mp4"
    weights = tiny_weights(tmp_path / "tiny.safetensors")
    r = subprocess.run([sys.executable, str(REPO / "run.py"), "--source", str(source), "--output", str(out),
                        "--audio", "--no-progress", "--weights", str(weights)],
                       capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert abs(_marker_onset(out) - MARK_AT) <= TOLERANCE_S


@pytest.mark.parametrize("codec", ["aac", "mp2"])  # copied (ADTS AAC), transcoded
def test_joined_ts_parts_keep_their_sound_with_their_frames(tmp_path, codec):
    """Three MPEG-TS files joined (``cat a.ts b.ts c.ts``, each 3 s, its clock from ~1.4 s): the frames are timed on
    across each join, and so is the sound, by the same shift, so each part's marker plays with its own frames, from
    the beginning and from --start 4 (in the second part), within one audio frame however many joins (was a muxing
    failure: "passing the audio of joined.ts through failed (Invalid argument); drop --audio")."""
    part = _make(tmp_path / "part.ts", audio_codec=codec, seconds=3.0)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(part.read_bytes() * 3)
    for start, marks in ((0.0, [MARK_AT, MARK_AT + 3.0, MARK_AT + 6.0]), (4.0, [MARK_AT - 1.0, MARK_AT + 2.0])):
        out = tmp_path / f"rec{start:g}.mp4"
        _record(joined, out, start)
        onsets = _marker_onsets(out)
        assert len(onsets) == len(marks) and np.abs(np.subtract(onsets, marks)).max() <= TOLERANCE_S, (start, onsets)
        video_end, audio_end = _ends(out)
        assert video_end == pytest.approx(9.0 - start) and abs(audio_end - video_end) <= TOLERANCE_S, audio_end


def test_audio_from_a_start_far_into_the_file_is_sought_to_it(tmp_path):
    """--start 117 of a 120 s MKV: the audio is read from near 117 s (was demuxed from the beginning, the whole 23 MB
    file read to drop what lies before the start). Counted in bytes this process read (Linux's rchar; opening the
    file twice, for the frames and the audio, reads about 1 MB each)."""
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("needs /proc/self/io (Linux)")
    source = _ffmpeg(tmp_path / "long.mkv", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=1:duration=120",
                     "-f", "lavfi", "-i", "sine=duration=120:sample_rate=48000", "-ac", "2", "-c:a", "pcm_s16le",
                     "-g", "1")
    out = tmp_path / "rec.mp4"

    def read() -> int:
        return int(next(line for line in io.read_text().splitlines() if line.startswith("rchar:")).split()[1])

    before = read()
    _record(source, out, start=117.0)
    assert read() - before < source.stat().st_size / 3, (read() - before, source.stat().st_size)
    video_end, audio_end = _ends(out)
    assert video_end == pytest.approx(3.0) and abs(audio_end - video_end) <= TOLERANCE_S, audio_end


def test_a_muxing_error_says_what_failed_not_to_free_space(tmp_path):
    """A file whose sound goes back 15 ms at its second part (part b = part a 1.99 s later on the clock, appended: less
    than a timestamp discontinuity or an audio frame, the video runs on), which the MP4 muxer refuses. That is no full disk: the
    message says the audio failed and to drop --audio (it said "write failed (Operation not permitted); free space
    or choose another path")."""
    part = _make(tmp_path / "a.ts", audio_codec="aac", seconds=2.0)
    later = tmp_path / "b.ts"
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-copyts", "-i", str(part),
                    "-c", "copy", "-muxdelay", "0", "-muxpreload", "0", "-output_ts_offset", "1.99", str(later)],
                   check=True, timeout=60)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(part.read_bytes() + later.read_bytes())
    with pytest.raises(SinkError) as failure:
        _record(joined, tmp_path / "rec.mp4")
    assert str(failure.value).startswith(f"MP4 output {tmp_path / 'rec.partial.mp4'}: passing the audio of {joined} "
                                         "through failed (")
    assert str(failure.value).endswith("); drop --audio (the frames before it are kept in that file)")


@pytest.mark.parametrize("name,codec,channels", [("clip.ts", "ac3", 1), ("clip.mp4", "ac3", 6),
                                                  ("clip.mkv", "eac3", 2)])
def test_ac3_and_eac3_are_converted_to_aac(tmp_path, name, codec, channels):
    """FFmpeg's fragmented MP4 refuses an AC-3 or E-AC-3 track at its header (errno 22): it was copied, and the run
    ended in a segfault (exit 139, a 32-byte unplayable ``.partial.mp4``). Now it is converted to AAC, every channel
    kept, its sound in place and to the end of the last frame."""
    source, out = _make(tmp_path / name, audio_codec=codec, seconds=3.0, channels=channels), tmp_path / "rec.mp4"
    _record(source, out)
    with av.open(str(out)) as container:
        audio = container.streams.audio[0].codec_context
        assert (audio.name, audio.channels) == ("aac", channels)
    assert abs(_marker_onset(out) - MARK_AT) <= TOLERANCE_S, _marker_onset(out)
    video_end, audio_end = _ends(out)
    assert video_end == pytest.approx(3.0) and abs(audio_end - video_end) <= TOLERANCE_S, audio_end


def test_cli_records_an_ac3_ts_with_its_sound_and_every_json_line(tmp_path):
    """``rtseg --source ac3.ts --audio --output o.mp4 --json o.jsonl``: exit 0, every frame's JSON line, the video
    and its sound (was exit 139 with no message, 1 JSON line of 20 and no recording)."""
    source, out, lines = _make(tmp_path / "ac3.ts", audio_codec="ac3", seconds=2.0), tmp_path / "o.mp4", \
        tmp_path / "o.jsonl"
    r = subprocess.run([sys.executable, "-m", "rtseg", "--source", str(source), "--audio", "--engine", "slic",
                        "--segments", "30", "--output", str(out), "--json", str(lines), "--no-progress"],
                       capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert len(lines.read_text().splitlines()) == 20
    with av.open(str(out)) as container:
        assert len(list(container.decode(video=0))) == 20
    video_end, audio_end = _ends(out)
    assert abs(audio_end - video_end) <= TOLERANCE_S, (video_end, audio_end)


_FULL_FROM_THE_HEADER = textwrap.dedent(
    """
    import resource, signal, sys
    from rtseg.errors import SinkError
    from rtseg.video.sink_mp4 import Mp4Sink
    from rtseg.video.sources_av import FileSource
    source, out, audio, frame_threads = sys.argv[1:]
    frames = FileSource(source)
    sink = Mp4Sink(out, fps_hint=frames.fps, audio_from=source if audio == "audio" else None,
                   frame_threads=int(frame_threads))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG (a full disk)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))  # not a byte more: the header fails
    frames = iter(frames)
    for _ in range(2):  # a second write after the failure (a library caller's) is refused alike
        try:
            for frame in frames:
                sink.write(frame, None, frame.image)
        except SinkError as exc:
            print(exc)
    sink.abort()
    """
)


@pytest.mark.parametrize("audio, frame_threads", [("audio", 0), ("none", 2)])
def test_a_header_that_fails_is_one_line_and_leaves_no_file(tmp_path, audio, frame_threads):
    """A full disk from the first byte on: the recording's header fails. Muxing into that container after it
    (the audio at the end of a failed run; the frames x264's frame threads held back) crashed the process
    (segfault, the one-line message lost). Now the run ends with the message, nothing was recorded and no file is
    left: the next run on the same output is not refused for a ``.partial`` file left behind."""
    source, script, out = _make(tmp_path / "clip.mp4", audio_codec="aac", seconds=1.0), tmp_path / "rec.py", \
        tmp_path / "rec.mp4"
    script.write_text(_FULL_FROM_THE_HEADER)
    r = subprocess.run([sys.executable, str(script), str(source), str(out), audio, str(frame_threads)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert (r.returncode, r.stdout) == (0, f"MP4 output {out}: write failed (File too large); free space or choose "
                                           f"another path (nothing was recorded)\nMP4 output {out}: its start failed "
                                           "(said before); nothing more is written\n"), r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "rec.py"]
    _record(source, out)
    video_end, audio_end = _ends(out)
    assert video_end == pytest.approx(1.0) and abs(audio_end - video_end) <= TOLERANCE_S, audio_end
