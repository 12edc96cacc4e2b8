"""Video sources: turn a ``--source`` string into an iterator of :class:`~rtseg.types.Frame`.

``open_source(spec)`` picks the kind from the string:

=====================================  ==========================================
``0``, ``/dev/video0``                 webcam (OpenCV), live
``rtsp://``, ``rtmp://``, ``http(s)``  network stream (PyAV), live, reconnects
``dir/``, ``*.png`` (glob), ``a.jpg``  still images, in name order (numbers as numbers: img2 before img10)
``synthetic`` / ``synthetic:SEED``     procedurally drawn clip (``rtseg.data.synthetic``)
``-``, ``/dev/stdin``                  the video piped to standard input (``producer | rtseg --source -``)
anything else                          a video file FFmpeg can read (PyAV), or a pipe / FIFO carrying one
=====================================  ==========================================

Every source is an iterator and a context manager, reports ``is_live`` and
``fps``, and raises :class:`~rtseg.errors.SourceError` (one line) when it
cannot be opened or read.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator
from urllib.parse import urlsplit

import numpy as np

from rtseg.errors import ConfigError, SourceError, first_line
from rtseg.imageio import ImageReadError, decode_image, is_animated, read_image_bytes
from rtseg.ranges import check_number, number_problem
from rtseg.types import Frame
from rtseg.userfiles import in_name_order

if TYPE_CHECKING:
    from rtseg.data.synthetic import Instance

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https"})
STDIN = "/dev/stdin"
"""What ``--source -`` reads (:func:`source_path`): the video piped to standard input."""


#: A URL's scheme and ``//`` (group 1), and its ``user:password`` before an ``@`` (group 2) when it has one.
_AUTHORITY = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(?:([^/?#]*)@)?")


def url_scheme(spec: str) -> str:
    """The scheme of ``spec`` in lower case (RFC 3986: schemes are case-insensitive) when it starts like a URL
    (``scheme://``), else ``""``."""
    match = _AUTHORITY.match(spec)
    return match.group(1)[:-3].lower() if match else ""


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (safe to print or log; also when it does not parse)."""
    match = _AUTHORITY.match(url)
    if match is None or match.group(2) is None:
        return url
    return f"{match.group(1)}***@{url[match.end():]}"


def scrub(text: str, url: str) -> str:
    """Remove the credentials of ``url`` from ``text`` (e.g. an FFmpeg error message): the URL as given, then the
    password and the user name where they stand as words of their own (a user ``e`` or a password ``on`` made
    "Conn***ction r***fus***d" of every error line)."""
    match = _AUTHORITY.match(url)
    text = text.replace(url, redact_url(url))
    user, _, password = (match.group(2) or "").partition(":") if match else ("", "", "")
    for secret in (password, user):
        if secret:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


def stream_url(url: str) -> str:
    """``url`` with its scheme in lower case (FFmpeg's protocol names are case-sensitive), once it parses and names
    a host and, if any, a port in 1..65535; else ValueError saying what is wrong and how to write it (without the
    URL: callers name it, redacted)."""
    form = "write it as scheme://host:port/path (an IPv6 host in brackets: [::1])"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"cannot parse URL ({first_line(exc)}); {form}") from None
    if not parts.hostname:
        raise ValueError(f"the URL has no host; {form}")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of 0..65535
        port = -1
    if port is not None and not 0 < port < 65536:
        given = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ValueError(f"invalid port {given!r}; give a port from 1 to 65535 (or none, for the scheme's default)")
    scheme = url_scheme(url)
    return scheme + url[len(scheme):]


def unresolved_host(url: str) -> str | None:
    """When the host name of ``url`` has no address: one clause saying so (without advice; names no credentials),
    e.g. ``host 'cam' not found (DNS lookup failed: Name or service not known)``; None when it resolves (an IP
    literal, ``localhost``), or the URL names no host. FFmpeg reports such a host only as "Input/output error":
    ask this after FFmpeg failed so (the system's resolver answers; it may wait for its DNS timeout)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        return f"host {host!r} not found (DNS lookup failed: {exc.strerror})"
    except UnicodeError:  # Python's IDNA encoding: an empty label (a..b) or one over 63 characters
        return f"host {host!r} is no valid host name (an empty part between dots, or one over 63 characters)"
    return None


class Source:
    """Base of every source: an iterator of frames with ``is_live``, ``fps`` and ``close()``.

    Subclasses implement :meth:`_frames` (yield ``(image, pts)`` pairs, after setting
    ``decode_seconds`` to the work spent on that frame, waits for data excluded, ``_file`` to the image file
    it was read from, if any, ``_index`` to its :attr:`Frame.index <rtseg.types.Frame.index>`, if it has one, and
    ``_duration`` to its :attr:`Frame.duration <rtseg.types.Frame.duration>`, if known) and may override
    :meth:`close`. ``seq`` counts every frame the source yields.
    ``notices`` collects one-line remarks for the user (e.g. a file that ended early), shown at
    the end; ``on_event`` (a callable taking one line, default: nothing) is told at once what a
    live source goes through (a stream lost, reconnecting, back); given to the constructor, it is told from the
    opening on (a pipe whose writer stalls while it is opened). ``request_stop()`` may be called
    from any thread: a waiting or reconnecting source then ends promptly.
    """

    is_live: bool = False

    def __init__(self, *, source_id: str, fps: float | None = None, num_frames: int | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.source_id = source_id
        self.fps = fps
        self.num_frames = num_frames  # expected number of frames, when known (progress bar)
        self.reconnects = 0
        self.decode_seconds = 0.0
        self._file: str | None = None  # Frame.file of the next frame yielded
        self._index: int | None = None  # Frame.index of the next frame yielded
        self._duration: float | None = None  # Frame.duration of the next frame yielded
        self.notices: list[str] = []
        self.on_event: Callable[[str], None] = on_event or (lambda line: None)
        self._stop = threading.Event()
        self.closed = False  # closed (:meth:`close`): it yields nothing more
        self._iter: Iterator[Frame] | None = None

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        raise NotImplementedError

    def _generate(self) -> Iterator[Frame]:
        for seq, (image, pts) in enumerate(self._frames()):
            yield Frame(image=image, source_id=self.source_id, seq=seq, pts=pts, capture_time=time.monotonic(),
                        file=self._file, index=self._index, duration=self._duration)

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._iter is None:
            self._iter = self._generate()
        if self._stop.is_set():
            raise StopIteration
        return next(self._iter)

    def request_stop(self) -> None:
        """Ask the source to end (thread-safe); the next read returns StopIteration."""
        self._stop.set()

    def close(self) -> None:
        """Release the device, stream or file (idempotent); :attr:`closed` from then on."""
        self.closed = True
        self._stop.set()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Nominal frame rate of an image sequence (FFmpeg's image2 default): images carry no timestamps.
IMAGE_FPS = 25.0


class ImageSource(Source):
    """Still images read with OpenCV, in the given order, every ``vid_stride``-th one.

    The k-th image yielded has pts k / :data:`IMAGE_FPS` s and is shown for 1 / :data:`IMAGE_FPS` s, so a video
    written from a folder plays at that rate (not at the speed the images were read) and ``--realtime`` can pace a
    folder; its index is its position among all the files (those ``vid_stride`` passes over, and unreadable ones,
    counted). A file that cannot be read (not an image OpenCV decodes, not readable by this user, a FIFO, a symbolic
    link to nothing …) is skipped with a warning saying why (``on_event``; the first :attr:`WARN_SKIPPED`
    files by name, the rest counted in one of ``notices``); a source none of whose files can be read raises
    :class:`SourceError` (one line: a single image gives no warning before it).
    """

    WARN_SKIPPED = 5

    def __init__(self, paths: list[Path], *, source_id: str, vid_stride: int = 1,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.files = paths  # every file the folder, glob or name gives (the command line keeps outputs off them)
        self.paths = paths[::vid_stride]  # the ones read
        self._stride = vid_stride
        super().__init__(source_id=source_id, fps=IMAGE_FPS, num_frames=len(self.paths), on_event=on_event)
        self._duration = 1.0 / IMAGE_FPS

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        k = 0
        skipped: list[tuple[Path, str]] = []  # (file, why)
        animated = 0
        for j, path in enumerate(self.paths):
            t0 = time.perf_counter()
            try:
                data = read_image_bytes(path)
                image = decode_image(data)
            except ImageReadError as exc:
                skipped.append((path, str(exc)))
                self._warn_skipped(skipped)
                continue
            if is_animated(data):
                animated += 1
                self._warn_animated(path, animated)
            self.decode_seconds = time.perf_counter() - t0
            self._file, self._index = str(path), j * self._stride
            yield np.ascontiguousarray(image), k / IMAGE_FPS
            k += 1
        if skipped and k == 0:
            path, why = skipped[0]
            if len(self.paths) == 1:
                raise SourceError(f"cannot read image {path}: {why}")
            raise SourceError(f"cannot read any image of {self.source_id} ({len(skipped)} skipped, e.g. {path}: "
                              f"{why})")
        if len(skipped) > self.WARN_SKIPPED:
            self.notices.append(f"skipped {len(skipped)} unreadable image(s) of {self.source_id} in all; "
                                f"the first {self.WARN_SKIPPED} were named as they were skipped")

    def _warn_animated(self, path: Path, count: int) -> None:
        """Say that the animated image ``path`` (the ``count``-th of this source) gives its first frame only;
        the first :attr:`WARN_SKIPPED` by name, then once that further ones are not named."""
        if count <= self.WARN_SKIPPED:
            hint = ("pass it alone as --source to play it" if path.suffix.lower() == ".png"  # (FFmpeg plays APNG)
                    else "convert it to a video or to one image per frame to read them all")
            more = "; further ones are not named" if count == self.WARN_SKIPPED else ""
            self.on_event(f"{path} is an animated image: only its first frame is read; {hint}{more}")

    def _warn_skipped(self, skipped: list[tuple[Path, str]]) -> None:
        """Warn of the last of the ``skipped`` files, unless it is the source's only file (then the error says
        it) or more than :attr:`WARN_SKIPPED` were skipped (then only counted)."""
        if len(self.paths) == 1 or len(skipped) > self.WARN_SKIPPED:
            return
        path, why = skipped[-1]
        more = "; further ones are only counted" if len(skipped) == self.WARN_SKIPPED else ""
        self.on_event(f"skipped {path}: {why}{more}")


class SyntheticSource(Source):
    """Frames of :class:`rtseg.data.synthetic.SyntheticScene` (moving shapes with ground truth).

    keep_truth: keep each frame's ground truth (its visible instances, rendered with the frame) until
    :meth:`truth` takes it, so that an evaluating sink need not render the frame again. Only for consumers
    that take every frame's truth (the pipeline drops no frame of this source unless it is paced).
    """

    def __init__(self, *, seed: int, width: int = 640, height: int = 480, num_frames: int = 300,
                 fps: float = 30.0, vid_stride: int = 1, keep_truth: bool = False) -> None:
        from rtseg.data.synthetic import SyntheticScene

        check_number("SyntheticSource: fps", fps, 0, integer=False, open_low=True)
        self.scene = SyntheticScene(seed, width=width, height=height, num_frames=num_frames)
        self.indices = range(0, len(self.scene), vid_stride)
        super().__init__(source_id=f"synthetic:{seed}", fps=fps / vid_stride, num_frames=len(self.indices))
        self._period = 1.0 / fps
        self._truth: dict[int, list[Instance]] | None = {} if keep_truth else None

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        for seq, i in enumerate(self.indices):
            t0 = time.perf_counter()
            image, instances = self.scene.frame(i)
            self.decode_seconds = time.perf_counter() - t0
            if self._truth is not None:
                self._truth[seq] = instances
            self._index, self._duration = i, (min(i + self.indices.step, len(self.scene)) - i) * self._period
            yield image, i * self._period

    def truth(self, seq: int) -> list[Instance]:
        """The visible instances of frame ``seq`` (:attr:`Frame.seq` of this source): the ones kept with the
        frame (``keep_truth``; handed out once), else rendered again."""
        kept = self._truth.pop(seq, None) if self._truth is not None else None
        return kept if kept is not None else self.scene.frame(self.indices[seq])[1]


class Paced(Source):
    """Replay ``inner`` as a live source at ``fps`` frames per second of wall time.

    Frames come out on schedule whether or not the consumer keeps up, exactly like
    a camera: a slow consumer loses frames instead of slowing the clock. Used for
    ``--realtime`` and for latency benchmarks. ``on_event`` starts as ``inner``'s, and is passed on to it.
    """

    is_live = True

    def __init__(self, inner: Source, *, fps: float | None = None) -> None:
        """fps: the replay rate (a finite number > 0); None: ``inner.fps``, which must then be known."""
        if fps is not None:
            check_number("Paced: fps", fps, 0, integer=False, open_low=True)
        rate = inner.fps if fps is None else fps
        if number_problem(rate, 0, integer=False, open_low=True) is not None:
            raise ConfigError(f"cannot replay {inner.source_id} in real time: its frame rate is unknown; pass a rate")
        super().__init__(source_id=inner.source_id, fps=rate, num_frames=inner.num_frames, on_event=inner.on_event)
        self.inner = inner

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        self.inner.on_event = self.on_event  # what ``inner`` goes through (damaged data, a stalled pipe) is told too
        period = self._duration = 1.0 / self.fps
        t0 = time.monotonic()
        for i, frame in enumerate(self.inner):
            self.decode_seconds, self._file, self._index = self.inner.decode_seconds, frame.file, frame.index
            delay = t0 + i * period - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            yield frame.image, i * period

    def request_stop(self) -> None:
        """Ask this source and ``inner`` (which may be waiting for data, e.g. from a pipe) to end."""
        super().request_stop()
        self.inner.request_stop()

    def close(self) -> None:
        super().close()
        self.inner.close()


def _is_camera(spec: str) -> bool:
    return spec.isdigit() or re.fullmatch(r"/dev/video\d+", spec) is not None


def _synthetic(spec: str, vid_stride: int, options: dict) -> Source:
    from rtseg.data.synthetic import TEST_SEED

    _, colon, seed = spec.partition(":")
    if colon and not (seed.isascii() and seed.isdigit()):  # also "synthetic:" (an unset variable?) and "²"
        raise SourceError(f"bad synthetic source {spec!r}: write 'synthetic' or 'synthetic:SEED' with an integer seed")
    return SyntheticSource(seed=int(seed) if seed else TEST_SEED, vid_stride=vid_stride, **options)


_VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".ts", ".flv", ".wmv", ".mpg"})
#: Files a folder's images leave out that ``--source`` plays as videos: videos and GIFs (animations: a folder's
#: images are stills, and GIF is not among their suffixes; the GIFs a glob names are read as stills, first frames).
_PLAYED_SUFFIXES = _VIDEO_SUFFIXES | {".gif"}


def _videos_hint(paths: list[Path], suffixes: frozenset[str] = _VIDEO_SUFFIXES) -> str:
    """``"; found N video file(s): pass one video at a time …"`` when ``paths`` has videos (names ending in one of
    ``suffixes``), else ``""``."""
    videos = [p for p in paths if p.suffix.lower() in suffixes]
    if not videos:
        return ""
    return f"; found {len(videos)} video file(s): pass one video at a time as --source (e.g. {videos[0]})"


def _is_apng(path: Path) -> bool:
    """Whether ``path`` is an animated PNG (FFmpeg plays those; OpenCV reads their first frame); False for
    anything it cannot read (the image reader then says why)."""
    try:
        return path.suffix.lower() == ".png" and is_animated(read_image_bytes(path))
    except ImageReadError:
        return False


def _images(spec: str, vid_stride: int, on_event: Callable[[str], None] | None) -> Source | None:
    """An ImageSource for a directory, glob or single image; None when ``spec`` is none of those."""
    path = Path(spec)
    if path.is_dir():  # every entry but a subfolder: an image name that is a FIFO or a broken link is warned of
        files = in_name_order(p for p in path.iterdir() if not p.is_dir())
        paths = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if not paths:
            raise SourceError(f"no images in folder {spec} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
                              f"{_videos_hint(files, _PLAYED_SUFFIXES)}")
    elif glob.has_magic(spec):
        paths = in_name_order(Path(p) for p in glob.glob(spec) if not Path(p).is_dir())
        if not paths:
            raise SourceError(f"no files match {spec!r}; check the pattern (quote it so the shell does not expand it)")
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in paths) and _videos_hint(paths):
            raise SourceError(f"{spec!r} matches no images{_videos_hint(paths)}")
    elif path.suffix.lower() in IMAGE_SUFFIXES and path.exists():  # a FIFO too: refused, never waited on
        if _is_apng(path):
            return None  # an animated PNG alone: every frame, at its times, through FFmpeg as a video
        paths = [path]
    else:
        return None
    return ImageSource(paths, source_id=spec, vid_stride=vid_stride, on_event=on_event)


def _live_refusal(what: str, vid_stride: int, start: float, end: float | None, realtime: bool) -> ConfigError | None:
    """The error for file-only options given with a live source (``what``: e.g. "camera 0 is a live source"),
    None when none was given."""
    if vid_stride == 1 and start == 0 and end is None and not realtime:
        return None
    return ConfigError(f"{what}: --vid-stride, --start, --end and --realtime apply to files, folders and synthetic "
                       "clips (a live source keeps its newest frames)")


def _no_time_range(start: float, end: float | None, what: str) -> None:
    """ConfigError when a time range is asked of a source without a timeline to cut (``what`` names it)."""
    if start > 0 or end is not None:
        raise ConfigError(f"--start / --end cut video files, not {what}: use --max-frames (and --vid-stride) instead")


def source_path(spec: str) -> str:
    """``spec`` with ``-`` as :data:`STDIN` (as ``--json -`` is standard output): what a source string names."""
    return STDIN if spec == "-" else spec


def empty_stdin(how: str) -> SourceError:
    """The error for standard input (:data:`STDIN`) with nothing in it; ``how``: how it came to be empty, in a few
    words."""
    return SourceError(f"source {STDIN}: standard input is empty ({how}); pipe a video in "
                       "(producer | rtseg --source -) or give the file")


def _check_stdin(spec: str) -> None:
    """SourceError when ``spec`` is standard input and that is a terminal (nothing piped in), which would be
    waited on for a video until the pipe timeouts ran out, or /dev/null (closed: the command line puts /dev/null
    there), which FFmpeg called invalid data. (A pipe that ends without data is told apart once read, by
    :class:`~rtseg.video.sources_av.FileSource`.)"""
    if spec != STDIN:
        return
    if os.isatty(0):
        raise SourceError(f"source {spec}: standard input is a terminal, not a video; pipe one in "
                          "(producer | rtseg --source -) or give the file")
    with contextlib.suppress(OSError):
        given = os.fstat(0)
        if stat.S_ISCHR(given.st_mode) and given.st_rdev == os.stat(os.devnull).st_rdev:
            raise empty_stdin(f"closed, or {os.devnull}")


def open_source(
    spec: str,
    *,
    vid_stride: int = 1,
    start: float = 0.0,
    end: float | None = None,
    realtime: bool = False,
    open_timeout: float = 10.0,
    read_timeout: float = 5.0,
    reconnect_timeout: float = 60.0,
    synthetic: dict | None = None,
    on_event: Callable[[str], None] | None = None,
) -> Source:
    """Open the source named by ``spec`` (see the module docstring for the forms).

    vid_stride: keep every k-th frame (files, images, synthetic; live sources keep all
        frames and drop by latency instead).
    start, end: seconds into a video file (``end`` exclusive; None = to the end).
    realtime: replay a file, folder or synthetic clip as a live source at its frame rate.
    open_timeout, read_timeout: seconds before a network stream counts as unreachable / stalled (a pipe or FIFO
        as stalled: a warning).
    reconnect_timeout: seconds a dropped stream may stay down before the source gives up (a pipe or FIFO: stay
        without data, at least ``read_timeout``).
    synthetic: keyword arguments for :class:`SyntheticSource` (width, height, num_frames, fps).
    on_event: told what the source goes through (:attr:`Source.on_event`), from its opening on (a pipe or FIFO
        whose writer stalls while it is opened): given to the constructors of the sources that report (cameras and
        synthetic clips report nothing).
    """
    check_number("open_source: vid_stride", vid_stride, 1, integer=True)
    check_number("open_source: start", start, 0, integer=False)
    if end is not None:
        check_number("open_source: end", end, 0, integer=False, open_low=True)
        if not end > start:
            raise ConfigError(f"open_source: end must be after start ({start!r} seconds), got {end!r}")
    if not spec.strip():
        raise SourceError("--source is empty; give a camera index, URL, file, folder, glob or 'synthetic'")
    spec = source_path(spec)
    scheme = url_scheme(spec)
    if scheme in STREAM_SCHEMES:
        from rtseg.video.sources_av import FileSource
        from rtseg.video.sources_live import StreamSource

        try:
            spec = stream_url(spec)
        except ValueError as exc:
            raise SourceError(f"cannot open stream {redact_url(spec)}: {exc}") from None
        stream = StreamSource(spec, open_timeout=open_timeout, read_timeout=read_timeout,
                              reconnect_timeout=reconnect_timeout, on_event=on_event)
        if not stream.is_live:  # an HTTP file: read as a file (seeks, --start/--end/--vid-stride, damaged packets)
            stream.close()
            source = FileSource(spec, vid_stride=vid_stride, start=start, end=end,
                                timeouts=(open_timeout, read_timeout), on_event=on_event)
            return Paced(source) if realtime else source
        refusal = _live_refusal(f"{redact_url(spec)} is a live stream", vid_stride, start, end, realtime)
        if refusal is not None:
            stream.close()
            raise refusal
        return stream
    if scheme:
        raise SourceError(
            f"unsupported URL scheme {scheme!r} in {redact_url(spec)}: "
            f"use one of {', '.join(sorted(STREAM_SCHEMES))}, a file, a folder or a camera index"
        )
    if _is_camera(spec):
        from rtseg.video.sources_cam import CameraSource

        refusal = _live_refusal(f"camera {spec} is a live source", vid_stride, start, end, realtime)
        if refusal is not None:
            raise refusal
        return CameraSource(spec, read_timeout=read_timeout)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        _no_time_range(start, end, "a synthetic clip")
        source = _synthetic(spec, vid_stride, synthetic or {})
    else:
        source = _images(spec, vid_stride, on_event)
        if source is not None:
            _no_time_range(start, end, f"the images of {spec}")
        else:
            from rtseg.video.sources_av import FileSource

            if os.path.islink(spec) and not os.path.exists(spec):
                raise SourceError(f"source {spec}: a symbolic link to nothing (its target is missing or the "
                                  f"links loop); point it at the video or pass the file itself")
            if not os.path.exists(spec):
                raise SourceError(f"source not found: {spec} "
                                  f"(expected a video file, image, folder, glob, URL, camera index or - for "
                                  f"standard input)")
            _check_stdin(spec)
            source = FileSource(spec, vid_stride=vid_stride, start=start, end=end,
                                pipe_timeouts=(read_timeout, reconnect_timeout), on_event=on_event)
    return Paced(source) if realtime else source
