"""What every runnable segmenter offers the pipeline, CLI and API."""
from __future__ import annotations

from typing import Protocol, Sequence, overload, runtime_checkable

import numpy as np

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
