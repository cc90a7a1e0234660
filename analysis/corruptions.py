"""Image corruptions over whole batches of [0, 1] images, and the model's accuracy under them.

MNIST-C-style corruptions (Mu & Gilmer, 2019); random parameters are drawn per image from a seeded
generator, so a corruption is deterministic under its ``seed``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from lenet_utils import accuracy

# MNIST-C-style corruptions (Mu & Gilmer, 2019) over whole batches of [0, 1] images, random
# parameters drawn per image from a seeded generator. Each takes (images, severity, generator);
# severity is in the unit named in CORRUPTIONS, and severity 0 is the identity where noted.


def _random_signs(n: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n,), generator=generator, device=generator.device).float() * 2 - 1


def _affine(images: Tensor, matrix: Tensor, shift: Tensor | None = None) -> Tensor:
    """Resample each image at ``matrix @ xy + shift`` (normalized coords; matrix (N, 2, 2))."""
    shift = torch.zeros(len(images), 2, device=images.device) if shift is None else shift
    theta = torch.cat([matrix, shift.unsqueeze(2)], dim=2).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def _rotate(images: Tensor, degrees: float, generator: torch.Generator) -> Tensor:
    angle = _random_signs(len(images), generator) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    return _affine(images, torch.stack([cos, -sin, sin, cos], 1).view(-1, 2, 2))


def _shear(images: Tensor, amount: float, generator: torch.Generator) -> Tensor:
    s = _random_signs(len(images), generator) * amount
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    return _affine(images, torch.stack([one, s, zero, one], 1).view(-1, 2, 2))


def _scale(images: Tensor, amount: float, generator: torch.Generator) -> Tensor:
    inverse_zoom = (1 + amount) ** -_random_signs(len(images), generator)  # zoom in or out by 1 + amount
    return _affine(images, torch.diag_embed(inverse_zoom.unsqueeze(1).expand(-1, 2)))


def _translate(images: Tensor, pixels: float, generator: torch.Generator, direction: Tensor | None = None) -> Tensor:
    if direction is None:
        direction = torch.rand(len(images), generator=generator, device=images.device) * 2 * math.pi
    shift = torch.stack([direction.cos(), direction.sin()], 1) * (2 * pixels / images.shape[-1])
    return _affine(images, torch.eye(2, device=images.device).expand(len(images), 2, 2), shift)


def _motion_blur(images: Tensor, length: float, generator: torch.Generator) -> Tensor:
    direction = torch.rand(len(images), generator=generator, device=images.device) * math.pi
    offsets = torch.linspace(-length / 2, length / 2, max(int(length), 1))
    return torch.stack([_translate(images, float(t), generator, direction) for t in offsets]).mean(0)


def _gaussian_blur(images: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    if sigma == 0:
        return images
    kernel = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def _shot_noise(images: Tensor, photons: float, generator: torch.Generator) -> Tensor:
    return torch.poisson(images * photons, generator=generator) / photons


def _impulse_noise(images: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    hit = torch.rand(images.shape, generator=generator, device=images.device) < fraction
    salt_or_pepper = torch.randint(0, 2, images.shape, generator=generator, device=images.device)
    return torch.where(hit, salt_or_pepper.to(images.dtype), images)


def _brightness(images: Tensor, delta: float, generator: torch.Generator) -> Tensor:
    return images + delta


def _contrast(images: Tensor, reduction: float, generator: torch.Generator) -> Tensor:
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * (1 - reduction) + mean


def _stripe(images: Tensor, width: float, generator: torch.Generator) -> Tensor:
    start = torch.randint(0, images.shape[-1] - int(width) + 1, (len(images), 1, 1, 1),
                          generator=generator, device=images.device)
    column = torch.arange(images.shape[-1], device=images.device)
    inside = (column >= start) & (column < start + int(width))
    return torch.where(inside, 1 - images, images)


def _fog(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    coarse = torch.rand(len(images), 1, 4, 4, generator=generator, device=images.device)
    fine = torch.rand(len(images), 1, 7, 7, generator=generator, device=images.device)
    fog = sum(F.interpolate(f, size=images.shape[-2:], mode="bilinear", align_corners=False) * w
              for f, w in ((coarse, 2 / 3), (fine, 1 / 3)))
    return images + strength * fog


def _draw_polylines(images: Tensor, count: float, generator: torch.Generator, corners: int,
                    dotted: bool) -> Tensor:
    """Draw ``count`` random polylines of ``corners`` points per image, in white."""
    n, size = len(images), images.shape[-1]
    out = images.clone().view(n, -1)
    steps = torch.linspace(0, 1, 2 * size, device=images.device)[:: 6 if dotted else 1]
    for _ in range(int(count)):
        points = torch.rand(n, corners, 2, generator=generator, device=images.device) * (size - 1)
        start, end = points[:, :-1, None, :], points[:, 1:, None, :]
        xy = (start + (end - start) * steps[:, None]).round().long().view(n, -1, 2)
        out.scatter_(1, xy[..., 1] * size + xy[..., 0], 1.0)
    return out.view_as(images)


def _edge_map(images: Tensor, mix: float, generator: torch.Generator) -> Tensor:
    sobel_x = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=images.dtype, device=images.device)
    kernels = torch.stack([sobel_x, sobel_x.T]).unsqueeze(1)
    edges = F.conv2d(images, kernels, padding=1).norm(dim=1, keepdim=True)
    edges = edges / edges.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return (1 - mix) * images + mix * edges


# name -> (function, default severity, unit of severity; "identity at 0" where severity 0 changes nothing)
CORRUPTIONS: dict[str, tuple[Callable[[Tensor, float, torch.Generator], Tensor], float, str]] = {
    "shot_noise": (_shot_noise, 10.0, "photons at white (Poisson); lower is noisier"),
    "impulse_noise": (_impulse_noise, 0.15, "fraction of pixels set to 0 or 1; identity at 0"),
    "gaussian_blur": (_gaussian_blur, 1.5, "blur sigma in pixels; identity at 0"),
    "motion_blur": (_motion_blur, 6.0, "blur length in pixels, random direction; identity at 0"),
    "rotate": (_rotate, 30.0, "degrees, random sign; identity at 0"),
    "shear": (_shear, 0.5, "horizontal shear factor, random sign; identity at 0"),
    "scale": (_scale, 0.5, "zoom by 1 + s, in or out at random; identity at 0"),
    "translate": (_translate, 3.0, "shift in pixels, random direction; identity at 0"),
    "brightness": (_brightness, 0.4, "added to every pixel; identity at 0"),
    "contrast": (_contrast, 0.7, "fraction of contrast removed; identity at 0"),
    "stripe": (_stripe, 4.0, "width in pixels of an inverted vertical band; identity at 0"),
    "fog": (_fog, 0.6, "strength of a smooth random haze; identity at 0"),
    "dotted_line": (lambda x, s, g: _draw_polylines(x, s, g, corners=2, dotted=True), 1.0,
                    "number of random dotted lines; identity at 0"),
    "zigzag": (lambda x, s, g: _draw_polylines(x, s, g, corners=4, dotted=False), 1.0,
               "number of random 3-segment zigzags; identity at 0"),
    "edge_map": (_edge_map, 1.0, "blend towards the Sobel edge map; identity at 0"),
}


def corrupt(images: Tensor, name: str, severity: float | None = None, seed: int = 0) -> Tensor:
    """Apply corruption ``name`` (a key of CORRUPTIONS) at ``severity`` (default: the suite's),
    deterministically under ``seed``; the result is clipped to [0, 1]."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    function, default, _ = CORRUPTIONS[name]
    severity = default if severity is None else severity
    if isinstance(severity, bool) or not isinstance(severity, numbers.Real):
        raise TypeError(f"severity must be a real number, got {type(severity).__name__}")
    if not math.isfinite(severity) or severity < 0 or (name == "shot_noise" and severity == 0):
        raise ValueError(f"severity for {name} must be finite and >= 0 (> 0 for shot_noise), got {severity}")
    generator = torch.Generator(device=images.device).manual_seed(seed)
    return function(images, float(severity), generator).clamp(0, 1)


def evaluate_corruptions(model: nn.Module, images: Tensor, labels: Tensor,
                         names: Sequence[str] | None = None, seed: int = 0) -> dict[str, float]:
    """Accuracy (%) under each corruption at its default severity, plus their ``"mean"``."""
    names = list(CORRUPTIONS) if names is None else list(names)
    if not names:
        raise ValueError("names is empty; pass None for the whole suite")
    results = {name: accuracy(model, corrupt(images, name, seed=seed), labels) for name in names}
    results["mean"] = sum(results.values()) / len(results)
    return results
