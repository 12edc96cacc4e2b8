"""Deterministic random YOLACT weights, shared by the reference-fixture script and the tests.

The official dbolya/yolact model and rtseg's ``Yolact`` have the same ``state_dict``
layout, so feeding both the same *template* (key -> (shape, dtype)) and seed gives
bit-identical weights without storing any weights in the repository.

Every value depends only on (key, shape, seed, head_gain, and for the conf head's bias the
shape of its sibling box head): each key has its own ``torch.Generator`` seeded with
``zlib.crc32(key) ^ seed``, so the result does not depend on the order of the keys.

A plainly random network is dull: its deep features are nearly constant over the image
(the DC level that random convs and ReLUs build up swamps the structure), so every
prior predicts the same class and masks are all-or-nothing. The scale rules below
keep structure alive and give *interesting* outputs instead (a few dozen candidates
above 0.05, many classes, masks partly filling their boxes):

- conv weights: He-normal, ``std = sqrt(2 / fan_in)``; k x k kernels (k > 1) outside
  the FPN are made zero-sum over their k x k taps (rescaled to keep the std), so they
  answer to edges and texture rather than to the DC level;
- BatchNorm: gamma in [0.5, 1.0] (deep residual stacks stay bounded), beta and
  running_mean tiny (they would add DC), running_var in [0.8, 1.2],
  ``num_batches_tracked`` = 0 (int64);
- conv biases: N(0, 0.05);
- the prediction head's shared ``upfeature`` conv weight is multiplied by ``head_gain``
  (shallower backbones give weaker random features and need a larger gain);
- the conf head's bias: N(0, 0.5) plus an offset on each prior's background logit,
  so only a few dozen priors per frame score a foreground class above 0.05.
"""
from __future__ import annotations

import math
import re
import zlib
from typing import Mapping

import torch

#: key -> (shape, dtype) of a state_dict.
Template = Mapping[str, tuple[tuple[int, ...], torch.dtype]]

#: BatchNorm gamma range (uniform).
BN_GAMMA = (0.5, 1.0)
#: Std of BatchNorm beta and running_mean.
BN_SHIFT_STD = 0.005
#: Std of every conv bias except the conf head's.
CONV_BIAS_STD = 0.05
#: Std of the conf head's per-(prior, class) bias.
CONF_BIAS_STD = 0.5
#: Added to each prior's background logit in the conf head's bias.
CONF_BACKGROUND_OFFSET = 7.0


def _generator(key: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed((zlib.crc32(key.encode()) ^ seed) & 0xFFFF_FFFF)


def _conv_weight(prefix: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """He-normal weight; zero-sum over the taps of k x k kernels outside the FPN."""
    w = math.sqrt(2.0 / math.prod(shape[1:])) * torch.randn(shape, generator=g)
    taps = math.prod(shape[2:])
    if taps > 1 and not prefix.startswith("fpn."):
        w = (w - w.mean(dim=tuple(range(2, len(shape))), keepdim=True)) * math.sqrt(taps / (taps - 1))
    return w


def _conf_bias(template: Template, key: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Per-(prior, class) bias with a background offset; classes per prior from the box head."""
    num_priors = template[re.sub(r"conf_layer\.bias$", "bbox_layer.bias", key)][0][0] // 4
    bias = CONF_BIAS_STD * torch.randn(shape, generator=g)
    bias[0 :: shape[0] // num_priors] += CONF_BACKGROUND_OFFSET
    return bias


def _value(template: Template, key: str, shape: tuple[int, ...], seed: int, head_gain: float) -> torch.Tensor:
    g = _generator(key, seed)
    prefix, _, leaf = key.rpartition(".")
    is_bn = f"{prefix}.running_var" in template
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.int64)
    if is_bn and leaf == "weight":
        return BN_GAMMA[0] + (BN_GAMMA[1] - BN_GAMMA[0]) * torch.rand(shape, generator=g)
    if is_bn and leaf in ("bias", "running_mean"):
        return BN_SHIFT_STD * torch.randn(shape, generator=g)
    if is_bn and leaf == "running_var":
        return 0.8 + 0.4 * torch.rand(shape, generator=g)
    if leaf == "weight" and len(shape) >= 2:
        gain = head_gain if ".upfeature." in key else 1.0
        return gain * _conv_weight(prefix, shape, g)
    if leaf == "bias" and prefix.endswith("conf_layer"):
        return _conf_bias(template, key, shape, g)
    return CONV_BIAS_STD * torch.randn(shape, generator=g)


def random_yolact_state(template: Template, seed: int, *, head_gain: float = 1.0) -> dict[str, torch.Tensor]:
    """Deterministic random tensors for every key of a YOLACT ``state_dict`` template.

    template: key -> (shape, dtype), e.g. ``template_of(model.state_dict())``.
    seed: any int; the same (template, seed) always gives the same tensors, in any key order.
    head_gain: multiplies the prediction head's shared ``upfeature`` conv weight, i.e. the
        scale of the features the box/conf/mask heads see; shallower backbones (ResNet-50,
        DarkNet-53) give weaker random features and need a larger gain for the same
        number of candidates.
    Returns: key -> CPU tensor of that shape and dtype.
    """
    return {
        key: _value(template, key, tuple(shape), seed, head_gain).to(dtype) for key, (shape, dtype) in template.items()
    }


def template_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The template (key -> (shape, dtype)) of a ``state_dict``."""
    return {k: (tuple(v.shape), v.dtype) for k, v in state_dict.items()}
