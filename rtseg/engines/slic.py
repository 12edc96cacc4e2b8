"""SLIC superpixels (Achanta et al. 2010/2012) as an engine.

Two backends behind one engine:

* ``"skimage"`` (default): :func:`skimage.segmentation.slic`, the reference.
* ``"torch"``: :func:`slic_torch`, our own vectorised SLIC that runs on CPU or
  GPU. Every pixel compares itself with the cluster centres seeded in the 3x3
  grid cells around its own cell (the 2S x 2S search window of the paper), so an
  iteration is a handful of dense tensor ops instead of a loop over centres.
  Connectivity is enforced afterwards with tensor ops too (connected-component
  labelling by min-propagation, then small fragments absorbed by neighbours).

Both give ``Superpixels`` with ids 0..K-1; ``tests/test_slic.py`` checks that
their boundary recall, undersegmentation error and achievable segmentation
accuracy agree on the synthetic benchmark.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rtseg.engines.base import frames_as_list, host_tensor
from rtseg.engines.options import check_int, check_real, resolve_device
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
def slic_torch(image: torch.Tensor, *, n_segments: int = 200, compactness: float = 10.0, iterations: int = 10,
               min_size_factor: float = 0.25) -> torch.Tensor:
    """SLIC superpixels with tensor ops only (CPU or GPU).

    image: (H, W, 3) uint8 BGR tensor on any device.
    n_segments: approximate number of superpixels; the grid step is S = sqrt(H*W / n_segments).
    compactness: m of the paper; distance = d_lab^2 + (m / S)^2 * d_xy^2.
    iterations: assignment/update rounds (10 as in the paper).
    min_size_factor: fragments smaller than this fraction of S*S are merged into a neighbour.
    Returns (H, W) int64 labels 0..K-1 on the image's device, every segment 4-connected.
    """
    h, w = image.shape[:2]
    dev = image.device
    step = max(math.sqrt(h * w / max(n_segments, 1)), 1.0)
    gh, gw = max(round(h / step), 1), max(round(w / step), 1)
    lab = bgr_to_lab(image)  # (3, H, W)
    ys = torch.arange(h, device=dev, dtype=torch.float32)
    xs = torch.arange(w, device=dev, dtype=torch.float32)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    feats = torch.cat([lab, yy[None], xx[None]]).reshape(5, -1)  # (5, N)
    # spatial axes scaled by m / S so that the SLIC distance is a plain squared Euclidean one
    feats = feats * torch.tensor([1.0, 1.0, 1.0, compactness / step, compactness / step], device=dev)[:, None]
    # seed centres at grid-cell centres; each pixel belongs to one cell
    cell_y = (yy * gh / h).long().clamp_max(gh - 1).reshape(-1)
    cell_x = (xx * gw / w).long().clamp_max(gw - 1).reshape(-1)
    cy = ((torch.arange(gh, device=dev) + 0.5) * h / gh).long().clamp_max(h - 1)
    cx = ((torch.arange(gw, device=dev) + 0.5) * w / gw).long().clamp_max(w - 1)
    centres = feats[:, (cy[:, None] * w + cx[None, :]).reshape(-1)]  # (5, K)
    k = gh * gw
    # candidate centres of each pixel: those seeded in the 3x3 cells around its own cell
    cands = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny, nx = cell_y + dy, cell_x + dx
            ok = (ny >= 0) & (ny < gh) & (nx >= 0) & (nx < gw)
            cands.append((ny.clamp(0, gh - 1) * gw + nx.clamp(0, gw - 1), ok))
    ones = torch.ones(h * w, device=dev)
    inf = torch.tensor(float("inf"), device=dev)
    for _ in range(iterations):
        best = torch.full((h * w,), float("inf"), device=dev)
        assign = cands[4][0]
        for idx, ok in cands:  # running arg-min over the 9 candidates keeps memory at O(N)
            dist = torch.where(ok, (feats - centres[:, idx]).square_().sum(0), inf)
            closer = dist < best
            best = torch.where(closer, dist, best)
            assign = torch.where(closer, idx, assign)
        sums = torch.zeros(5, k, device=dev).index_add_(1, assign, feats)
        count = torch.zeros(k, device=dev).index_add_(0, assign, ones)
        centres = torch.where(count[None] > 0, sums / count.clamp_min(1)[None], centres)
    labels = assign.reshape(h, w)
    return enforce_connectivity(labels, min_size=max(int(min_size_factor * step * step), 1))


def _neighbour_views(t: torch.Tensor, fill: int | bool) -> list[torch.Tensor]:
    """The 4-neighbours of every pixel of (H, W) ``t`` (up, down, left, right; ``t``'s dtype), padded with ``fill``."""
    p = F.pad(t[None, None], (1, 1, 1, 1), value=fill)[0, 0]
    return [p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]


def connected_components(labels: torch.Tensor) -> torch.Tensor:
    """(H, W) int64 -> (H, W) int64 id of the 4-connected component of equal labels (min flat index).

    Min-propagation with pointer jumping: converges in O(log diameter) jumps on
    typical superpixels. Indices are int32 (exact up to 2^31 pixels; float32 was exact only up to 2^24).
    """
    h, w = labels.shape
    comp = torch.arange(h * w, device=labels.device, dtype=torch.int32).reshape(h, w)
    same = [v == labels for v in _neighbour_views(labels, -1)]
    while True:
        best = comp
        for v, s in zip(_neighbour_views(comp, h * w), same):
            best = torch.minimum(best, torch.where(s, v, best))
        flat = best.reshape(-1)
        jumped = flat[flat]
        jumped = jumped[jumped].reshape(h, w)  # pointer jumping: follow the parent's parent
        if torch.equal(jumped, comp):
            return comp.long()
        comp = jumped


def enforce_connectivity(labels: torch.Tensor, *, min_size: int) -> torch.Tensor:
    """Split disconnected segments, merge fragments below ``min_size`` pixels into a neighbour, relabel 0..K-1.

    labels: (H, W) int64. Returns (H, W) int64 with every segment 4-connected.
    """
    comp = connected_components(labels)
    sizes = torch.bincount(comp.reshape(-1), minlength=comp.numel())
    small = sizes[comp] < min_size
    if small.all():  # nothing big enough to absorb fragments: keep components as they are
        small = torch.zeros_like(small)
    while small.any():  # grow big segments into adjacent small pixels, one ring per round
        grown = comp.clone()
        taken = ~small
        for v, ok in zip(_neighbour_views(comp, -1), _neighbour_views(~small, False)):
            pick = small & ~taken & ok
            grown = torch.where(pick, v, grown)
            taken = taken | pick
        comp, small = grown, small & ~taken
    return torch.unique(comp, return_inverse=True)[1].reshape(labels.shape)


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
        self.n_segments = check_int("slic", "n_segments", n_segments, low=1)
        self.compactness = check_real("slic", "compactness", compactness, low=0.0, open_low=True)
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
