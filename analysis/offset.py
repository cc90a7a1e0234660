"""How a LeNet-5 responds to a constant offset of its input (x -> x + c): the first layer's DC gain and
the relative change of its first-layer pre-activation and logits.

Why: MNIST-C's brightness, fog and stripe corruptions shift the intensity of large image regions. For a
linear convolution the response to a constant offset ``c`` is ``c * sum(W_k)`` per filter ``k`` (exactly,
away from the zero-padded border), so a first layer whose filters sum to about zero ignores such shifts.
These functions measure whether a model's filters do, in scale-free terms (SAM/ASAM and weight decay
change the weights' scale), and how far the offset travels to the logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

import lenet_utils as L

OFFSET_RANGE = 1.0  # offsets are checked to lie in [-1, 1]: the whole range of an image in [0, 1]


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's first ``nn.Conv2d`` (``features[0]`` of :class:`lenet_utils.LeNet5`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError("model has no nn.Conv2d layer")


def first_layer_dc_gain(model: nn.Module) -> dict:
    """The DC (constant-input) gain of each filter of the model's first convolution.

    For filter ``W_k`` (in_channels x kh x kw, ``m = in_channels * kh * kw`` weights), a constant offset
    ``c`` of the input changes the pre-activation by ``c * sum(W_k)`` wherever the kernel lies inside the
    image. Returned, per filter: ``weight_sum`` = sum(W_k), ``weight_norm`` = ||W_k||_2 and the
    scale-free ``relative_dc_gain`` = |sum(W_k)| / (||W_k||_2 * sqrt(m)) (for LeNet-5's 5x5 kernels,
    sqrt(m) = 5, the kernel side). By Cauchy-Schwarz it lies in [0, 1]: 0 for a zero-mean filter (blind
    to offsets), 1 for a constant (box) filter; its square is the share of the filter's energy in its
    mean. It is unchanged when the weights are scaled, which matters because ASAM changes weight scale.
    Also ``mean_relative_dc_gain`` (over filters) and ``bias``. Plain floats and lists (JSON-ready).
    """
    conv = first_conv(model)
    weight = conv.weight.detach().double().flatten(1)  # (filters, m)
    sums, norms = weight.sum(1), weight.norm(dim=1)
    relative = sums.abs() / (norms * math.sqrt(weight.shape[1])).clamp_min(1e-300)
    bias = conv.bias.detach().double().tolist() if conv.bias is not None else [0.0] * len(sums)
    return {"weight_sum": sums.tolist(), "weight_norm": norms.tolist(), "relative_dc_gain": relative.tolist(),
            "mean_relative_dc_gain": float(relative.mean()), "bias": bias}


def _check_inputs(images: object, labels: object, offsets: object) -> list[float]:
    """Validate the arguments of :func:`offset_response`; return the offsets as floats."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {getattr(images, 'dtype', type(images))}")
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64:
        raise TypeError(f"labels must be an int64 tensor, got {getattr(labels, 'dtype', type(labels))}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    if isinstance(offsets, (str, bytes)) or not isinstance(offsets, Sequence):
        raise TypeError(f"offsets must be a sequence of real numbers, got {type(offsets).__name__}")
    if len(offsets) == 0:
        raise ValueError("offsets must not be empty")
    for c in offsets:
        L.check_number("offset", c, low=-OFFSET_RANGE, high=OFFSET_RANGE)
    return [float(c) for c in offsets]


def _relative_change(shifted: Tensor, clean: Tensor) -> Tensor:
    """Per image: ||shifted - clean||_2 / ||clean||_2 over all of an image's units."""
    diff = (shifted - clean).flatten(1).norm(dim=1)
    return diff / clean.flatten(1).norm(dim=1).clamp_min(1e-12)


@torch.no_grad()
def offset_response(model: nn.Module, images: Tensor, labels: Tensor, offsets: Sequence[float],
                    batch_size: int = 2000) -> dict:
    """How the model responds to adding a constant ``c`` to every pixel, for each ``c`` in ``offsets``.

    Per offset (lists aligned with ``offsets``): ``accuracy`` (%) on ``images + c`` (not clipped, so the
    offset is exactly constant), ``conv1_relative_change`` = mean over images of
    ||a(x + c) - a(x)|| / ||a(x)||, with ``a`` the first convolution's pre-activation (its whole map,
    border included), and ``logit_relative_change``, the same for the logits ``z``. Also
    ``clean_accuracy`` (%) and ``n``. Eval mode and no gradients; the model's train/eval mode is restored.
    """
    conv = first_conv(model)
    offsets = _check_inputs(images, labels, offsets)
    L.check_number("batch_size", batch_size, low=1, integer=True)
    was_training = model.training
    model.eval()
    try:
        correct, conv_change, logit_change = ([0.0] * len(offsets) for _ in range(3))
        clean_correct = 0.0
        for x, y in zip(images.split(batch_size), labels.split(batch_size)):
            a0, z0 = conv(x), model(x)
            clean_correct += (z0.argmax(1) == y).sum().item()
            for i, c in enumerate(offsets):
                shifted = x + c
                a, z = conv(shifted), model(shifted)
                correct[i] += (z.argmax(1) == y).sum().item()
                conv_change[i] += _relative_change(a, a0).sum().item()
                logit_change[i] += _relative_change(z, z0).sum().item()
    finally:
        model.train(was_training)
    n = len(images)
    return {"offsets": offsets, "n": n, "clean_accuracy": 100 * clean_correct / n,
            "accuracy": [100 * v / n for v in correct],
            "conv1_relative_change": [v / n for v in conv_change],
            "logit_relative_change": [v / n for v in logit_change]}
