"""What every runnable segmenter offers the pipeline, CLI and API."""
from __future__ import annotations

import warnings
from typing import Iterable, Protocol, Sequence, overload, runtime_checkable

import numpy as np
import torch

from rtseg.errors import ConfigError
from rtseg.types import Prediction


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
    if not single and (isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable)):
        raise ConfigError(f"expected an H×W×3 uint8 BGR numpy array or a sequence of them, got {type(frames).__name__}")
    images = [frames] if single else list(frames)
    for i, img in enumerate(images):
        which = "frame" if single else f"frame {i} of the batch"
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ConfigError(f"{which}: expected an H×W×3 uint8 BGR array, got {got}")
        if img.size == 0:
            raise ConfigError(f"{which}: empty image {img.shape}; skip frames with no pixels")
    return single, images


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

