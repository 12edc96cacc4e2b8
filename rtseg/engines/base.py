"""What every runnable segmenter offers the pipeline, CLI and API."""
from __future__ import annotations

import numbers
import warnings
from typing import Iterable, Protocol, Sequence, overload, runtime_checkable

import numpy as np
import torch

from rtseg.errors import ConfigError
from rtseg.types import Prediction


def placeholder_names(n: int, *, background: bool = False) -> list[str]:
    """The names an engine gives the ``n`` classes of weights that name none: ``class0`` … ``class{n-1}``; with
    ``background``, class 0 is ``"background"`` (an FCN's)."""
    return ["background" if background and i == 0 else f"class{i}" for i in range(n)]


@runtime_checkable
class Engine(Protocol):
    """A runnable segmenter.

    ``engine(image)`` takes one (H, W, 3) uint8 BGR numpy image and returns one
    Prediction; ``engine([img1, img2, ...])`` returns a list (batched; frames may
    differ in size). ``warmup()`` runs one dummy batch so that the first real
    frame is not slowed by lazy initialisation.
    """

    class_names: Sequence[str]
    device: str

    @overload
    def __call__(self, frames: np.ndarray) -> Prediction: ...
    @overload
    def __call__(self, frames: Sequence[np.ndarray]) -> list[Prediction]: ...
    def __call__(self, frames): ...

    def warmup(self) -> None: ...


def frames_as_list(frames: np.ndarray | Sequence[np.ndarray]) -> tuple[bool, list[np.ndarray]]:
    """Validate engine input: ``(single, images)`` where each image is (H, W, 3) uint8 BGR.

    Raises ConfigError naming the bad frame. Shared by every engine.
    """
    single = isinstance(frames, np.ndarray)
    whole = None if single else _not_an_array(frames)  # a tensor or nested lists: a frame (or a batch) as a whole
    if whole or (not single and (isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable))):
        raise ConfigError(f"expected an H×W×3 uint8 BGR numpy array or a sequence of them, "
                          f"got {whole or type(frames).__name__}")
    images = [frames] if single else list(frames)
    for i, img in enumerate(images):
        which = "frame" if single else f"frame {i} of the batch"
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            got = (f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray)
                   else _not_an_array(img) or type(img).__name__)
            raise ConfigError(f"{which}: expected an H×W×3 uint8 BGR array, got {got}")
        if img.size == 0:
            raise ConfigError(f"{which}: empty image {img.shape}; skip frames with no pixels")
    return single, images


def _not_an_array(value: object) -> str | None:
    """What to say of a frame given as a torch tensor or as nested lists of numbers (``frame.tolist()``, depth >= 2)
    instead of a numpy array, with the conversion to use; None for anything else."""
    if isinstance(value, torch.Tensor):
        return (f"a {value.dtype} tensor of shape {tuple(value.shape)}; pass a numpy array instead, "
                "e.g. tensor.cpu().numpy()")
    leaf, depth = value, 0
    while isinstance(leaf, (list, tuple)) and leaf:
        leaf, depth = leaf[0], depth + 1
    if depth >= 2 and isinstance(leaf, numbers.Number):
        return "nested lists of numbers; pass a numpy array instead, e.g. np.asarray(frame, dtype=np.uint8)"
    return None


def host_tensor(img: np.ndarray) -> torch.Tensor:
    """A CPU tensor over ``img`` (C-contiguous; no copy when it already is), read-only arrays included.

    torch warns that it cannot mark a tensor read-only; rtseg never writes into it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(img))


class StagedEngine:
    """Mixin for engines split into ``preprocess`` → ``forward`` → ``postprocess``.

    Subclasses define ``preprocess(images) -> batch``, ``forward(batch) -> raw`` and
    ``postprocess(raw, sizes) -> list[Prediction]`` (sizes: (H, W) per frame); this supplies
    the Engine call: one image → one Prediction, a sequence → a list.
    """

    def __call__(self, frames: np.ndarray | Sequence[np.ndarray]) -> Prediction | list[Prediction]:
        single, images = frames_as_list(frames)
        if not images:
            return []
        preds = self.postprocess(self.forward(self.preprocess(images)), [img.shape[:2] for img in images])
        return preds[0] if single else preds

