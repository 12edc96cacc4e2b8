"""The choices and limits of :class:`~rtseg.models.yolact.YolactConfig`'s fields, without torch: the models use
them (:mod:`rtseg.models.backbones`, :mod:`rtseg.models.yolact`), and ``rtseg train`` offers and checks its options
with them before it imports torch (``--help`` and a bad option answer at once)."""
from __future__ import annotations

#: The names of :data:`rtseg.models.yolact.PRESETS`, the published configurations (offered by the benchmarks'
#: options before torch is imported; tests/test_benchmark_args.py holds them equal).
PRESET_NAMES = ("yolact_base", "yolact_resnet50", "yolact_darknet53", "yolact_im700")
#: The backbones :func:`rtseg.models.backbones.build_backbone` builds.
BACKBONES = ("resnet101", "resnet50", "resnet18", "darknet53")
#: Inclusive (low, high) of each integer field of :class:`~rtseg.models.yolact.YolactConfig`, the one place these
#: limits live (the train CLI checks its options against them too). The highs keep a hand-edited manifest from
#: exhausting memory while leaving room: 2048 px has 14x the pixels of the official 550 (400 to 700), LVIS has 1203
#: classes, the paper uses 256 channels and 32 prototypes.
LIMITS: dict[str, tuple[int, int]] = {
    "num_classes": (1, 5000), "input_size": (32, 2048), "fpn_channels": (1, 1024), "num_prototypes": (1, 256),
}
