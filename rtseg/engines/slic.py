"""SLIC superpixels (Achanta et al. 2010/2012) as an engine.

Two backends behind one engine:

* ``"skimage"`` (default): :func:`skimage.segmentation.slic`, the reference.
* ``"torch"``: :func:`slic_torch`, our own vectorised SLIC that runs on CPU or
  GPU. Every pixel compares itself with the cluster centres seeded in the 3x3
  grid cells around its own cell (the 2S x 2S search window of the paper), so an
  iteration is a handful of dense tensor ops instead of a loop over centres.
  Connectivity is enforced afterwards with tensor ops too (connected components
  of horizontal runs by min-propagation, then small fragments absorbed by their
  neighbours as if these grew ring by ring, computed from city-block distances
  and pointer jumping; every cluster of at least the minimum size keeps its
  largest fragment, so texture or noise that shatters clusters into small pieces
  still gives about as many segments as asked).

Both give ``Superpixels`` with ids 0..K-1; ``tests/test_slic.py`` checks that
their boundary recall, undersegmentation error and achievable segmentation
accuracy agree on the synthetic benchmark.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from rtseg.engines.base import frames_as_list, host_tensor
from rtseg.engines.options import check_int, check_option, resolve_device
from rtseg.errors import ConfigError
from rtseg.types import Superpixels

BACKENDS = ("skimage", "torch")


# -- colour --------------------------------------------------------------------------------
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_D65 = torch.tensor([0.95047, 1.0, 1.08883])


def bgr_to_lab(image: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 BGR -> (3, H, W) float32 CIELAB (D65, L in [0, 100]), as skimage's rgb2lab."""
    rgb = image.flip(-1).float().div(255.0)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = lin @ _RGB_TO_XYZ.to(lin.device).T / _D65.to(lin.device)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lab = torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])])
    return lab


# -- torch SLIC ----------------------------------------------------------------------------
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
"""The 3x3 grid cells a pixel searches around its own, in the order that breaks ties (the first wins)."""


def _cells(n: int, cells: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Split an axis of ``n`` pixels into ``cells`` runs of consecutive pixels (lengths differ by at most one),
    laid out padded: every cell gets ``size`` slots, the length of the longest cell.

    Returns (cell, slot, source, size): (n,) int64 cell of each pixel, (n,) int64 slot of each pixel
    (``cell * size + offset in its cell``), (cells * size,) int64 pixel shown in each slot (a padding slot
    repeats its cell's last pixel), and ``size``.
    """
    cell = (torch.arange(n, device=device, dtype=torch.float32) * cells / n).long().clamp_max(cells - 1)
    length = torch.bincount(cell, minlength=cells)
    size = int(length.max())
    first = length.cumsum(0) - length
    slot = cell * size + torch.arange(n, device=device) - first[cell]
    offset = torch.arange(size, device=device)
    source = (first[:, None] + torch.minimum(offset[None], length[:, None] - 1)).reshape(-1)
    return cell, slot, source, size


def _grid(h: int, w: int, n_segments: int) -> tuple[int, int, float, float]:
    """The grid of seeds for an H x W frame: (cells along y, cells along x, S, spacing).

    S = sqrt(H*W / n_segments) (at least 1) is the side of a square of the mean segment area. On a frame at least
    S across, the grid has round(H / S) x round(W / S) cells and ``spacing`` (the seeds' spacing, the scale of the
    spatial distance) is S. A frame thinner than S gets, as in scikit-image's ``slic``, one cell across and
    ``n_segments`` along, S^2 pixels each, and ``spacing`` is their length. (S-wide cells would hold under S^2
    pixels: under S^2 / 4, the default minimum segment size, on frames under S/4 across, which became one segment.)
    """
    n = max(n_segments, 1)
    step = max(math.sqrt(h * w / n), 1.0)
    if min(h, w) >= step:
        return max(round(h / step), 1), max(round(w / step), 1), step, step
    spacing = max(h, w) / n
    return (1, n, step, spacing) if h < w else (n, 1, step, spacing)


def slic_torch(image: torch.Tensor, *, n_segments: int = 200, compactness: float = 10.0, iterations: int = 10,
               min_size_factor: float = 0.25) -> torch.Tensor:
    """SLIC superpixels with tensor ops only (CPU or GPU).

    image: (H, W, 3) uint8 BGR tensor on any device.
    n_segments: approximate number of superpixels; the grid step is S = sqrt(H*W / n_segments) (see :func:`_grid`
        for frames thinner than S).
    compactness: m of the paper; distance = d_lab^2 + (m / spacing)^2 * d_xy^2, spacing = S (see :func:`_grid`),
        any finite m > 0 (computed divided by max(1, (m / spacing)^2), which cannot overflow; a huge m gives the
        regular grid).
    iterations: assignment/update rounds (10 as in the paper).
    min_size_factor: fragments smaller than this fraction of S*S are merged into a neighbour (see
        :func:`enforce_connectivity`).
    Returns (H, W) int64 labels 0..K-1 on the image's device, every segment 4-connected.

    The assignment works on the frame laid out by grid cell, (gh, bh, gw, bw) with every cell padded to bh x bw
    pixels, so that the centre a pixel compares itself with for one of the 3x3 cell offsets is a broadcast slice
    of the (5, gh + 2, gw + 2) grid of centres, whose border of +inf stands for "no such cell". The spatial terms
    of the distance are computed per row and per column and broadcast.
    """
    h, w = image.shape[:2]
    dev = image.device
    gh, gw, step, spacing = _grid(h, w, n_segments)
    cell_y, slot_y, source_y, bh = _cells(h, gh, dev)
    cell_x, slot_x, source_x, bw = _cells(w, gw, dev)
    # the SLIC distance as a plain squared Euclidean one, divided by max(1, r^2) (r = m / spacing) so that it stays
    # finite at any m: spatial axes scaled by min(r, 1), colour by min(1, 1 / r) (as scikit-image scales it by 1 / m)
    ratio = compactness / spacing
    lab = bgr_to_lab(image)  # (3, H, W)
    if ratio > 1:
        lab.mul_(1 / ratio)
    ys = torch.arange(h, device=dev, dtype=torch.float32).mul_(min(ratio, 1.0))
    xs = torch.arange(w, device=dev, dtype=torch.float32).mul_(min(ratio, 1.0))
    feats = torch.cat([lab, ys[None, :, None].expand(1, h, w), xs[None, None, :].expand(1, h, w)]).reshape(5, -1)
    # the five channels in the cell layout: colour (gh, bh, gw, bw), y (gh, bh, 1, 1), x (1, 1, gw, bw)
    colour = lab.index_select(1, source_y).index_select(2, source_x).view(3, gh, bh, gw, bw)
    channels = [*colour, ys[source_y].view(gh, bh, 1, 1), xs[source_x].view(1, 1, gw, bw)]
    terms = [torch.empty(torch.broadcast_shapes(c.shape, (gh, 1, gw, 1)), device=dev) for c in channels]
    # seed centres at grid-cell centres
    cy = ((torch.arange(gh, device=dev) + 0.5) * h / gh).long().clamp_max(h - 1)
    cx = ((torch.arange(gw, device=dev) + 0.5) * w / gw).long().clamp_max(w - 1)
    centres = feats[:, (cy[:, None] * w + cx[None, :]).reshape(-1)]  # (5, K)
    k = gh * gw
    own = (cell_y[:, None] * gw + cell_x[None, :]).reshape(-1)  # (N,) id of the centre seeded in a pixel's cell
    shift = torch.tensor([dy * gw + dx for dy, dx in _OFFSETS], device=dev)  # offset number -> centre id shift
    grid = torch.full((5, gh + 2, gw + 2), float("inf"), device=dev)
    dist, best = torch.empty(2, gh, bh, gw, bw, device=dev)
    closer = torch.empty_like(dist, dtype=torch.bool)
    nearest = torch.empty_like(dist, dtype=torch.uint8)  # offset number of the nearest centre so far
    for _ in range(iterations):
        grid[:, 1:-1, 1:-1] = centres.view(5, gh, gw)
        for i, (dy, dx) in enumerate(_OFFSETS):
            centre = grid[:, 1 + dy:1 + dy + gh, 1 + dx:1 + dx + gw, None][:, :, None]  # (5, gh, 1, gw, 1)
            for c, term, ctr in zip(channels, terms, centre):
                torch.sub(c, ctr, out=term).square_()
            torch.add(terms[0], terms[1], out=dist)  # (((L + a) + b) + y) + x: as a sum over the 5 channels rounds
            for term in terms[2:]:
                dist.add_(term)
            if i == 0:
                best.copy_(dist)
                nearest.zero_()
            else:  # the last offset to improve on the running minimum is the first nearest one
                torch.lt(dist, best, out=closer)
                torch.maximum(nearest, closer.view(torch.uint8).mul(i), out=nearest)
                torch.minimum(best, dist, out=best)
        picked = nearest.view(gh * bh, gw * bw).index_select(0, slot_y).index_select(1, slot_x).reshape(-1)
        assign = own + shift.index_select(0, picked.long())
        sums = torch.zeros(5, k, device=dev).index_add_(1, assign, feats)
        count = torch.bincount(assign, minlength=k).to(sums.dtype)
        centres = torch.where(count[None] > 0, sums / count.clamp_min(1)[None], centres)
    labels = assign.reshape(h, w)
    return enforce_connectivity(labels, min_size=max(int(min_size_factor * step * step), 1))


def connected_components(labels: torch.Tensor) -> torch.Tensor:
    """(H, W) int64 -> (H, W) int64 id of the 4-connected component of equal labels (its smallest flat index).

    Works on runs (maximal horizontal stretches of one label): runs of equal labels that touch vertically are
    linked, and every run takes the smallest run number of its component by min-propagation over the links with
    pointer jumping. Runs are numbered in raster order, so the first pixel of a component's first run is its
    smallest flat index.
    """
    h, w = labels.shape
    dev = labels.device
    starts = torch.ones(h, w, dtype=torch.bool, device=dev)
    starts[:, 1:] = labels[:, 1:] != labels[:, :-1]
    starts = starts.reshape(-1)
    run = starts.cumsum(0) - 1  # (N,) run number of every pixel
    first = starts.nonzero()[:, 0]  # (R,) flat index of every run's first pixel
    # two runs that overlap vertically are linked where the overlap begins: at the start of one of them
    linked = (labels[1:] == labels[:-1]).reshape(-1) & (starts[w:] | starts[:-w])
    above = linked.nonzero()[:, 0]
    a, b = run.index_select(0, above), run.index_select(0, above + w)
    parent = torch.arange(len(first), device=dev)
    while True:
        low = parent.scatter_reduce(0, a, parent.index_select(0, b), "amin")
        low = low.scatter_reduce_(0, b, parent.index_select(0, a), "amin")
        low = low.index_select(0, low)  # pointer jumping: follow the parent's parent
        if torch.equal(low, parent):
            return first.index_select(0, parent).index_select(0, run).reshape(h, w)
        parent = low


def _neighbours(idx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(4, M) int64 flat indices of the up, down, left and right neighbours of the (M,) int64 flat pixel indices
    ``idx`` of an H x W frame; the pixel itself where that neighbour is off the frame."""
    y, x = idx // w, idx % w
    inside = torch.stack([y > 0, y < h - 1, x > 0, x < w - 1])
    return torch.where(inside, torch.stack([idx - w, idx + w, idx - 1, idx + 1]), idx)


def _line_steps(line: torch.Tensor, pos: torch.Tensor, length: int, steps: torch.Tensor, far: int) -> torch.Tensor:
    """One pass of a city-block distance transform along lines (rows or columns), over the unreached pixels only.

    line, pos: (M,) int64 line and position on it (0..length-1) of the unreached pixels, sorted by line, then
    position. steps: (M,) int64 steps from each pixel to a reached one found so far, 1..``far`` (``far``: more
    than any distance in the frame). Returns (M,) int64 the fewest steps via a pixel q of the same line:
    min(steps[q] + |pos - pos[q]|), 1 beside a reached pixel.

    A pixel beside a reached one on its line starts at 1; then prefix minima of steps[q] -/+ pos[q] forwards and
    backwards. A line is offset below the lines before it (forwards) or after it (backwards) by more than its
    values' spread, so that only its own pixels count; within a line, a pixel beyond a reached one never wins
    over the pixel beside it (1 step from the reached one, one step nearer).
    """
    after = torch.ones_like(pos, dtype=torch.bool)  # the pixel starts a run of unreached pixels on its line
    after[1:] = (line[1:] != line[:-1]) | (pos[1:] != pos[:-1] + 1)
    beside = (after & (pos > 0)) | (after.roll(-1) & (pos < length - 1))
    steps = steps.masked_fill(beside, 1)
    base = pos + line * (far + length)
    fwd = torch.cummin(steps - base, 0).values + base
    bwd = torch.cummin((steps + base).flip(0), 0).values.flip(0) - base
    return torch.minimum(fwd, bwd)


def _steps_to(reached: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """Fewest 4-connected steps from each pixel to a reached one (the city-block distance transform).

    reached: (H, W) bool, at least one True. rest: (M,) int64 flat indices of the False pixels, ascending.
    Returns (H*W,) int64 steps, 0 on the reached pixels. The distance is separable: steps along the row, then the
    fewest of those plus the steps along the column (:func:`_line_steps`, in raster, then column-major order).
    """
    h, w = reached.shape
    far = h + w
    steps = torch.zeros(h * w, dtype=torch.int64, device=rest.device)
    y = rest // w
    x = rest - y * w
    steps.index_copy_(0, rest, _line_steps(y, x, w, torch.full_like(x, far), far))
    x, y = (~reached).T.nonzero().unbind(1)
    flat = y * w + x
    return steps.index_copy_(0, flat, _line_steps(x, y, h, steps.index_select(0, flat), far))


def enforce_connectivity(labels: torch.Tensor, *, min_size: int) -> torch.Tensor:
    """Split segments into their 4-connected fragments, merge fragments into a neighbour, relabel 0..K-1.

    Kept: every fragment of at least ``min_size`` pixels, and the largest fragment (the first in raster order on
    a tie) of every label of at least ``min_size`` pixels in all, so that a label shattered into small pieces
    (SLIC on noise or fine texture) still gives a segment; when no label is that large, the largest label's
    largest fragment. The other fragments are absorbed by the kept ones as if these grew one pixel ring per round,
    a pixel joining its first neighbour (up, down, left, right) that was kept or joined in an earlier round. A
    pixel's round is its city-block distance to the nearest kept pixel (:func:`_steps_to`), so it joins the
    kept fragment at the end of the path through its first neighbour one step closer, found by pointer jumping:
    log2(rounds) gathers instead of a gather per ring (a thin frame or noise needs hundreds or thousands of rings).
    labels: (H, W) int64. Returns (H, W) int64 with every segment 4-connected.
    """
    h, w = labels.shape
    comp = connected_components(labels).reshape(-1)
    sizes = torch.bincount(comp, minlength=comp.numel())  # pixels per component id (a flat index)
    ids = sizes.nonzero()[:, 0]  # ascending: raster order of the components' first pixels
    # the label of each component (its id is one of its pixels), as 0..L-1
    owner = torch.unique(labels.reshape(-1).index_select(0, ids), return_inverse=True)[1]
    size = sizes.index_select(0, ids)
    total = torch.zeros(int(owner.max()) + 1, dtype=size.dtype, device=size.device).index_add_(0, owner, size)
    # the largest fragment of each label: the highest size * #fragments - rank (the rank breaks ties)
    key = size * len(ids) - torch.arange(len(ids), device=ids.device)
    largest = torch.full_like(total, -1).scatter_reduce_(0, owner, key, "amax")
    enough = total >= min(min_size, int(total.max()))
    keep = (size >= min_size) | ((key == largest.index_select(0, owner)) & enough.index_select(0, owner))
    kept = torch.zeros_like(sizes, dtype=torch.bool).index_fill_(0, ids[keep], True)
    done = kept.index_select(0, comp)  # (N,) pixel belongs to a kept fragment
    rest = (~done).nonzero()[:, 0]
    steps = _steps_to(done.view(h, w), rest)
    near = _neighbours(rest, h, w)
    closer = steps.index_select(0, near.reshape(-1)).view(near.shape) < steps.index_select(0, rest)
    toward = torch.where(closer[0], near[0], torch.where(closer[1], near[1], torch.where(closer[2], near[2], near[3])))
    # pointer jumping in place: comp of a pixel not yet resolved is ~(the pixel it points at), a negative number;
    # every round, each such pixel takes over the value of the one it points at: its component id, or its pointer
    # (so it points twice as far): after r rounds, the pixels up to 2^r - 1 steps from a kept one are resolved
    comp.index_copy_(0, rest, ~toward)
    for _ in range(int(steps.max()).bit_length()):
        at = comp.index_select(0, rest)
        comp.index_copy_(0, rest, comp.index_select(0, torch.where(at < 0, ~at, rest)))
    return (kept.cumsum(0) - 1).index_select(0, comp).view(h, w)


# -- engine --------------------------------------------------------------------------------
class SlicEngine:
    """Superpixel engine: ``engine(image) -> Superpixels`` (see :class:`rtseg.engines.base.Engine`).

    backend: "skimage" (reference, CPU only) or "torch" (our implementation, CPU or GPU); default:
        skimage on the CPU, torch on a CUDA device.
    n_segments, compactness, iterations: SLIC parameters (paper defaults: m = 10, 10 rounds).
    """

    class_names: Sequence[str] = ()

    def __init__(self, *, backend: str | None = None, n_segments: int = 200, compactness: float = 10.0,
                 iterations: int = 10, device: str = "cpu") -> None:
        self._device = resolve_device(device)
        self.device = str(self._device)
        if backend is None:
            backend = "skimage" if self._device.type == "cpu" else "torch"
        if backend not in BACKENDS:
            raise ConfigError(f"slic: unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if backend == "skimage" and self._device.type != "cpu":
            raise ConfigError(f"slic: the skimage backend runs on the CPU only; use backend='torch' for {device!r} "
                              f"(or leave backend= out)")
        self.backend = backend
        self.n_segments = check_option("slic", "n_segments", n_segments)
        self.compactness = check_option("slic", "compactness", compactness)
        self.iterations = check_int("slic", "iterations", iterations, low=1)

    def segment(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR -> (H, W) int64 superpixel ids 0..K-1."""
        if self.backend == "skimage":
            from skimage.segmentation import slic

            labels = slic(image[..., ::-1], n_segments=self.n_segments, compactness=self.compactness,
                          max_num_iter=self.iterations, start_label=0, convert2lab=True)
            return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)
        t = host_tensor(image).to(self._device)
        return slic_torch(t, n_segments=self.n_segments, compactness=self.compactness,
                          iterations=self.iterations).cpu().numpy()

    def __call__(self, frames: np.ndarray | Sequence[np.ndarray]) -> Superpixels | list[Superpixels]:
        single, images = frames_as_list(frames)
        out = [Superpixels(labels=self.segment(img)) for img in images]
        return out[0] if single else out

    def warmup(self) -> None:
        """One small dummy frame (imports, allocator)."""
        self(np.zeros((64, 64, 3), np.uint8))
