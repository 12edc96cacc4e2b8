"""Long-run soak of the CLI as a user runs it: memory, threads, fds, child processes, reconnects, clean exit.

    python -m benchmarks.soak --minutes 35 --outages      # from the repo root, with the venv

Parts, all real and on loopback:
- source: the tests' GStreamer RTSP server (``tests/servers/rtsp_server.py``): a live synthetic 640x360
  H.264 30 FPS pattern that never ends;
- pipeline: ``python -m rtseg --source rtsp://… --output X.mp4 --json X.jsonl --serve 127.0.0.1:P --push
  rtmp://…`` in a subprocess, the shipped demo model, default engine and backend;
- push receiver: the tests' Debian ffmpeg RTMP listener (``tests/test_push.py``), restarted if it ends;
- clients: one poller of ``/stats.json`` (every second) and one ``/stream.mjpg`` reader.

With ``--outages`` the push receiver is killed (down 5 s) 3 times and the RTSP server once (down 3 s),
spread over the run. Every 10 s the CLI process is sampled: RSS (MiB, ``VmRSS``), threads, open fds,
child processes (the push worker) and their RSS, FPS / latency / frames / reconnects from the stats JSON.
At the end the CLI gets SIGINT (exit time and code measured) and the MP4's decoded frames are compared
with the JSONL lines. ``benchmarks/results/soak.json``: the samples, summaries and least-squares RSS
slopes (MiB/min) over the whole run (from the first frame on), the last half, and after the first 5 minutes (warm-up).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import av
import numpy as np

from benchmarks.common import checked, run_checked, write_result
from rtseg.cliargs import TypedFloat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from servers.helpers import RtspServer, free_port, push_receiver, rtsp_server_available, wait_listening  # noqa: E402

SAMPLE_S = 10.0
WARMUP_MIN = 5.0


def proc_status(pid: int) -> dict[str, float]:
    """RSS (MiB) and thread count of ``pid`` from /proc/PID/status."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            out["rss_mb"] = int(value.split()[0]) / 1024
        elif key == "Threads":
            out["threads"] = int(value)
    return out


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc/*/stat)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def slope(samples: list[dict[str, Any]], t_from: float) -> float | None:
    """Least-squares slope of RSS (MiB per minute) over the samples at or after ``t_from`` minutes."""
    pts = [(s["t_min"], s["rss_mb"]) for s in samples if s["t_min"] >= t_from]
    if len(pts) < 3:
        return None
    t, r = np.array(pts).T
    return float(np.polyfit(t, r, 1)[0])


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


class Clients:
    """The web page's two readers: ``/stats.json`` every second (latest kept) and one ``/stream.mjpg``."""

    def __init__(self, base: str) -> None:
        self.base, self.stats, self.stop = base, {}, threading.Event()
        self.stats_ok = self.stats_errors = self.jpegs = self.stream_opens = self.stream_errors = 0
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._poll, self._stream)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _poll(self) -> None:
        while not self.stop.wait(1.0):
            try:
                with urllib.request.urlopen(self.base + "/stats.json", timeout=5) as r:
                    self.stats = json.loads(r.read())
                self.stats_ok += 1
            except (OSError, ValueError):
                self.stats_errors += 1

    def _stream(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.base + "/stream.mjpg", timeout=10) as r:
                    self.stream_opens += 1
                    tail = b""
                    while chunk := r.read(65536):
                        data = tail + chunk
                        self.jpegs += data.count(b"--rtsegframe")
                        tail = data[-16:].replace(b"--rtsegframe", b"")
            except OSError:
                self.stream_errors += 1
            self.stop.wait(1.0)


class Receiver:
    """The push receiver (ffmpeg RTMP listener, one client): restarted when it ends outside an outage."""

    def __init__(self, url: str, port: int, folder: Path) -> None:
        self.url, self.port, self.folder = url, port, folder
        self.proc: subprocess.Popen | None = None
        self.files: list[Path] = []
        self.unplanned_exits = 0

    def start(self) -> None:
        self.files.append(self.folder / f"push_{len(self.files)}.flv")
        self.proc = push_receiver("rtmp", self.url, self.files[-1])
        wait_listening(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def keep_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.unplanned_exits += 1
            self.start()

    def finish(self) -> list[int]:
        """SIGTERM (ffmpeg closes its file); video packets received per receiver session."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.communicate(timeout=15)
        counts = []
        for f in self.files:
            try:
                with av.open(str(f)) as c:
                    counts.append(sum(1 for p in c.demux(video=0) if p.size))
            except (av.FFmpegError, OSError):
                counts.append(0)
        return counts


def mp4_frames(path: Path) -> int:
    """Frames PyAV decodes from the recording (-1: unreadable)."""
    try:
        with av.open(str(path)) as c:
            return sum(1 for _ in c.decode(video=0))
    except (av.FFmpegError, OSError):
        return -1


def schedule(minutes: float, outages: bool) -> list[tuple[float, str]]:
    """(minute, event) pairs: push receiver killed 3 times, RTSP server restarted once."""
    if not outages:
        return []
    return sorted([(minutes * f, "push") for f in (0.2, 0.45, 0.8)] + [(minutes * 0.6, "rtsp")])


def soak(minutes: float, outages: bool, work: Path) -> dict[str, Any]:
    rtsp = RtspServer(free_port(), width=640, height=360).start()
    drain = threading.Thread(target=lambda: rtsp.proc.stderr.read(), daemon=True)  # never let a pipe fill
    drain.start()
    push_port, web_port = free_port(), free_port()
    push_url = f"rtmp://127.0.0.1:{push_port}/live/soak"
    receiver = Receiver(push_url, push_port, work)
    receiver.start()
    mp4, jsonl, log = work / "soak.mp4", work / "soak.jsonl", work / "cli.log"
    cmd = [sys.executable, "-m", "rtseg", "--source", rtsp.url, "--output", str(mp4), "--json", str(jsonl),
           "--serve", f"127.0.0.1:{web_port}", "--push", push_url, "--no-progress"]
    print("soak:", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    with open(log, "w") as log_file:
        cli = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    clients = Clients(f"http://127.0.0.1:{web_port}")
    clients.start()
    events, samples, pending = [], [], schedule(minutes, outages)
    next_sample = 0.0
    while (now := (time.monotonic() - t0) / 60) < minutes and cli.poll() is None:
        if pending and now >= pending[0][0]:
            _, what = pending.pop(0)
            events.append({"t_min": round(now, 2), "event": f"{what} down"})
            print(f"soak: {now:6.2f} min  {what} outage", flush=True)
            if what == "push":
                receiver.kill()
                time.sleep(5)
                receiver.start()
            else:
                port = rtsp.port
                rtsp.stop()
                time.sleep(3)
                rtsp = RtspServer(port, width=640, height=360).start()
                threading.Thread(target=lambda p=rtsp.proc: p.stderr.read(), daemon=True).start()
            events.append({"t_min": round((time.monotonic() - t0) / 60, 2), "event": f"{what} up"})
        receiver.keep_alive()
        if now * 60 >= next_sample:
            next_sample += SAMPLE_S
            kids = children(cli.pid)
            st = clients.stats
            s = {"t_min": round(now, 3), **proc_status(cli.pid), "fds": len(os.listdir(f"/proc/{cli.pid}/fd")),
                 "children": len(kids),
                 "children_rss_mb": round(sum(proc_status(k).get("rss_mb", 0) for k in kids if
                                              Path(f"/proc/{k}").exists()), 1),
                 "frames": st.get("frames"), "fps_recent": st.get("fps_recent"),
                 "e2e_p50_ms": st.get("latency_ms", {}).get("end_to_end", {}).get("p50"),
                 "dropped": st.get("dropped"), "source_reconnects": st.get("source_reconnects"),
                 "push_reconnects": st.get("push_reconnects"), "mjpeg_frames": clients.jpegs}
            samples.append(s)
            print("soak:", " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()),
                  flush=True)
        time.sleep(0.5)
    died = cli.poll()
    final_stats = dict(clients.stats)
    t_int = time.monotonic()
    if died is None:
        cli.send_signal(signal.SIGINT)
        try:
            cli.wait(120)
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.wait()
    exit_s = time.monotonic() - t_int
    clients.stop.set()
    pushed = receiver.finish()
    rtsp.stop()
    text = log.read_text(errors="replace")
    lines = text.splitlines()
    mp4_count = mp4_frames(mp4)
    jsonl_count = len(jsonl.read_bytes().splitlines()) if jsonl.exists() else -1
    rss = [s["rss_mb"] for s in samples]
    t_run = next((s["t_min"] for s in samples if s["frames"]), 0.0)  # the first sample with frames written
    return {
        "minutes": minutes, "outages": outages, "command": cmd[1:], "events": events,
        "exit": {"code": cli.returncode, "seconds_after_sigint": round(exit_s, 2), "died_early": died is not None},
        "frames": {"mp4_decoded": mp4_count, "jsonl_lines": jsonl_count, "stats_frames": final_stats.get("frames"),
                   "match": mp4_count == jsonl_count and mp4_count > 0, "push_received_per_session": pushed,
                   "mjpeg_frames_read": clients.jpegs},
        "reconnects": {"stats_source": final_stats.get("source_reconnects"),
                       "stats_push": final_stats.get("push_reconnects"),
                       "stderr_stream_back": sum("rtseg: warning: stream" in x and " back after " in x for x in lines),
                       "stderr_push_back": sum("push output" in x and " back after " in x for x in lines),
                       "stderr_lost": sum(" lost (" in x for x in lines),
                       "receiver_unplanned_exits": receiver.unplanned_exits},
        "clients": {"stats_ok": clients.stats_ok, "stats_errors": clients.stats_errors,
                    "stream_opens": clients.stream_opens, "stream_errors": clients.stream_errors},
        "threads": spread([s["threads"] for s in samples]), "fds": spread([s["fds"] for s in samples]),
        "children": spread([s["children"] for s in samples]),
        "rss_mb": {"first_running": next(s["rss_mb"] for s in samples if s["t_min"] >= t_run), "last": rss[-1],
                   "peak": max(rss)},
        "rss_slope_mb_per_min": {"whole_from_first_frame": slope(samples, t_run),
                                 "last_half": slope(samples, minutes / 2),
                                 "after_warmup": slope(samples, WARMUP_MIN),
                                 "last_half_after_warmup": slope(samples, max(minutes / 2, WARMUP_MIN))},
        "fps_recent": spread([s["fps_recent"] for s in samples if s["fps_recent"]] or [0.0]),
        "tracebacks": text.count("Traceback"), "cli_log_tail": lines[-25:], "samples": samples,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything is started (argparse's usage and one error line, exit 2)."""
    ap = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=TypedFloat, default=35.0)
    ap.add_argument("--outages", action="store_true", help="kill the push receiver 3x and the RTSP server 1x")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (MP4, JSONL, CLI log)")
    ap.add_argument("--name", default="soak", help="results/<NAME>.json (a short trial: another name)")
    return checked(ap, ap.parse_args(argv), [
        ("--minutes", 1, None, f" (a sample every {SAMPLE_S:g} s; the RSS slopes need several)")])


def run(args: argparse.Namespace) -> int:
    if (why := rtsp_server_available()) is not None:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="rtseg-soak-"))
    result = soak(args.minutes, args.outages, work)
    path = write_result(args.name, result)
    r, sl = result["rss_mb"], result["rss_slope_mb_per_min"]
    fmt = {k: None if v is None else round(v, 3) for k, v in sl.items()}
    print(f"soak: RSS first (running) {r['first_running']:.0f} last {r['last']:.0f} peak {r['peak']:.0f} MiB; "
          f"slope MiB/min {fmt}")
    print(f"soak: threads {result['threads']} fds {result['fds']} children {result['children']}")
    print(f"soak: reconnects {result['reconnects']}")
    print(f"soak: exit {result['exit']}; frames {result['frames']}; tracebacks {result['tracebacks']}")
    print(f"soak: wrote {path}; work folder {work}")
    if not args.keep:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_checked(__file__, parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
