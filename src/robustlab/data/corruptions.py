"""Common corruptions (Hendrycks & Dietterich, 2019) for small images, in torch.

The 15 corruptions of ImageNet-C / CIFAR-10-C at 5 severities each, written for any NCHW float
image batch in [0, 1] (grayscale or RGB, any size), so Fashion-MNIST-C can be generated here the
way the stochastic-downsampling paper builds its "-C" datasets (Appendix A.1, "Datasets").

Severity parameters follow the CIFAR-10-C ones (32x32 images, the nearest published set to
Fashion-MNIST's 28x28) wherever they carry over; every corruption is our own code. We do not use
the ``imagecorruptions`` package: it needs OpenCV, scikit-image and ImageMagick (``Wand``), draws
from NumPy's global random state, assumes RGB images of at least 32x32 for several corruptions
and ships photographs for ``frost``. Differences to the reference, on purpose:

- ``frost`` overlays a procedural ice texture (thresholded multi-scale noise streaked along
  random directions) instead of the reference's six frost photographs;
- ``fog`` uses multi-octave value noise (a plasma-like fractal) in place of diamond-square;
- ``motion_blur`` rebuilds ImageMagick's ``MotionBlurImage`` kernel, which the reference calls
  through Wand: ``2 * ceil(radius) + 1`` taps ``i = 0, 1, ...`` at the integer offsets
  ``(round(i cos a), round(i sin a))`` (rows grow downwards, rounding as ``ceil(v - 0.5)``),
  weighted ``exp(-i^2 / (2 sigma^2))`` and normalized, edge pixels repeated at the border, with
  a random angle ``a`` in [-45, 45] degrees per image. ``(radius, sigma)`` are CIFAR-10-C's
  (``make_cifar_c.py``): (6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5), in pixels at every image
  size, since the reference does not scale them with the image (it ships a table per size
  instead: (10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3) for 64-pixel Tiny ImageNet-C, (10, 3)
  ... (20, 15) for ImageNet-C). Departures: the reference blurs the 8-bit PNG of the image and
  returns 8-bit values; here the blur runs in float and :func:`corrupt` rounds once at the end;
- ``snow`` still blurs its flakes with a simpler kernel than ImageMagick's: a bilinearly
  rasterized one-sided line at half the snow table's radius, radius and sigma scaled by the
  image size / 32, at an angle in [-45, 45] degrees (the reference: the motion blur above with
  the snow table's radius and sigma in pixels, at an angle in [-135, -45]);
- ``elastic_transform`` follows the reference in two resamplings: a random affine warp that moves
  three control points (the centre +- ``size // 3``) by ``U(-c, c)`` pixels each (OpenCV's
  ``getAffineTransform`` / ``warpAffine``, bilinear, reflect-101 border), then a displacement
  field ``alpha * G_sigma * U(-1, 1)`` per axis (Gaussian blur truncated at 3 sigma with
  half-sample-symmetric borders, as ``skimage.filters.gaussian(mode="reflect", truncate=3)``),
  sampled bilinearly with half-sample-symmetric borders (``map_coordinates(order=1,
  mode="reflect")``). ``(alpha, sigma, c)`` are CIFAR-10-C's, ``IMSIZE * (0, 0, 0.08), (0.05,
  0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)`` with ``IMSIZE = 32``;
  here ``IMSIZE`` is the image's smaller side, so 32-pixel images get the reference's values and
  other sizes the same values relative to the image. Departures: OpenCV interpolates with
  1/32-pixel fixed-point weights, here in float; on non-square images the centre is
  ``(W // 2, H // 2)`` (the reference, written for square images, would swap the two);
- ``glass_blur`` displaces pixels by random local offsets (a gather) instead of the
  reference's sequential pixel swaps;
- on grayscale images ``brightness`` shifts intensity directly (the reference shifts HSV value,
  the same thing for gray pixels) and ``snow`` blends towards the image itself.

Every corruption takes a ``torch.Generator``; the same generator state gives the same images.
Outputs are clipped to [0, 1]; :func:`corrupt` also rounds them to 8-bit levels, as the stored
``-C`` datasets are 8-bit images.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import InputError, Registry

Corruption = Callable[[Tensor, int, torch.Generator], Tensor]
"""``fn(x, severity, generator) -> x_corrupted`` for ``x`` (N, C, H, W) in [0, 1]."""

CORRUPTIONS: Registry[Corruption] = Registry("corruption")
"""The 15 corruptions of Hendrycks & Dietterich (2019), by their ImageNet-C names."""

SEVERITIES = (1, 2, 3, 4, 5)

# The reference's four groups, in its order (registry names use hyphens).
GROUPS = {
    "noise": ("gaussian-noise", "shot-noise", "impulse-noise"),
    "blur": ("defocus-blur", "glass-blur", "motion-blur", "zoom-blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic-transform", "pixelate", "jpeg-compression"),
}
NAMES = tuple(n for names in GROUPS.values() for n in names)
"""The 15 corruptions in the reference's order."""


def _rand(shape: Sequence[int], g: torch.Generator) -> Tensor:
    return torch.rand(tuple(shape), generator=g)


def _randn(shape: Sequence[int], g: torch.Generator) -> Tensor:
    return torch.randn(tuple(shape), generator=g)


def _gauss_kernel1d(sigma: float) -> Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    """Depthwise 2-D filtering with one kernel (kh, kw), reflect padding (replicate if too small)."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    mode = "reflect" if ph < h and pw < w else "replicate"
    xp = F.pad(x.reshape(n * c, 1, h, w), (pw, kw - 1 - pw, ph, kh - 1 - ph), mode=mode)
    return F.conv2d(xp, kernel.to(x.dtype)[None, None]).reshape(n, c, h, w)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` pixels."""
    if sigma <= 0:
        return x
    k = _gauss_kernel1d(sigma)
    return _filter(_filter(x, k[None, :]), k[:, None])


def _per_image_filter(x: Tensor, kernels: Tensor) -> Tensor:
    """Filter image i with kernels[i] (N, kh, kw), replicate padding."""
    n, c, h, w = x.shape
    kh, kw = kernels.shape[-2:]
    xp = F.pad(x.reshape(1, n * c, h, w), (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2), mode="replicate")
    weight = kernels.to(x.dtype).repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(xp, weight, groups=n * c).reshape(n, c, h, w)


def _line_kernels(n: int, length: float, sigma: float, g: torch.Generator) -> Tensor:
    """One-sided motion kernels: Gaussian-weighted samples along a ray at a random angle in
    [-45, 45] degrees, rasterized bilinearly; one per image, normalized to sum 1."""
    r = max(1, math.ceil(length))
    size = 2 * r + 1
    angles = (_rand((n,), g) * 90 - 45) * math.pi / 180
    steps = torch.linspace(0, length, max(2, 4 * r))
    weights = torch.exp(-0.5 * (steps / max(sigma, 1e-6)) ** 2)
    kernels = torch.zeros(n, size, size)
    for i in range(n):
        px = r + steps * torch.cos(angles[i])
        py = r - steps * torch.sin(angles[i])
        x0, y0 = px.floor().long(), py.floor().long()
        ax, ay = px - x0, py - y0
        for dx, dy, wgt in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)), (0, 1, (1 - ax) * ay), (1, 1, ax * ay)):
            xi, yi = (x0 + dx).clamp(0, size - 1), (y0 + dy).clamp(0, size - 1)
            kernels[i].index_put_((yi, xi), wgt * weights, accumulate=True)
    return kernels / kernels.sum(dim=(1, 2), keepdim=True)


def _motion_kernels(angles: Tensor, radius: float, sigma: float) -> Tensor:
    """ImageMagick's one-sided motion-blur kernels (see the module docstring), one per angle in
    degrees, as (N, 2 r + 1, 2 r + 1) correlation kernels centred on the output pixel; ``r`` is
    the number of taps less one."""
    taps = 2 * math.ceil(radius) + 1
    i = torch.arange(taps, dtype=torch.float64)
    weights = torch.exp(-(i**2) / (2 * max(sigma, 1e-12) ** 2))
    weights = weights / weights.sum()
    a = angles.double().view(-1, 1) * (math.pi / 180)
    dx = torch.ceil(i * torch.cos(a) - 0.5).long()  # ImageMagick rounds offsets as ceil(v - 0.5)
    dy = torch.ceil(i * torch.sin(a) - 0.5).long()
    r = taps - 1
    kernels = torch.zeros(len(angles), 2 * r + 1, 2 * r + 1, dtype=torch.float64)
    for k in range(len(angles)):
        kernels[k].index_put_((r + dy[k], r + dx[k]), weights, accumulate=True)
    return kernels.float()


def _symmetric_indices(n: int, pad: int) -> Tensor:
    """Indices of ``arange(-pad, n + pad)`` reflected about the outer pixel edges (d c b a | a b c d)."""
    m = torch.arange(-pad, n + pad) % (2 * n)
    return torch.where(m < n, m, 2 * n - 1 - m)


def _gaussian_filter_symmetric(x: Tensor, sigma: float, truncate: float = 3.0) -> Tensor:
    """Separable Gaussian filter of (N, C, H, W) with ``scipy.ndimage.gaussian_filter``'s kernel
    (radius ``int(truncate * sigma + 0.5)``) and its ``mode="reflect"`` border; ``sigma=0`` is the identity."""
    if sigma <= 0:
        return x
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    n, c, h, w = x.shape
    x = x[..., _symmetric_indices(h, r), :]
    x = F.conv2d(x.reshape(n * c, 1, h + 2 * r, w), k.view(1, 1, -1, 1)).reshape(n, c, h, w)
    x = x[..., _symmetric_indices(w, r)]
    return F.conv2d(x.reshape(n * c, 1, h, w + 2 * r), k.view(1, 1, 1, -1)).reshape(n, c, h, w)


def _sample_pixels(x: Tensor, px: Tensor, py: Tensor, border: str) -> Tensor:
    """Bilinear samples of ``x`` at pixel coordinates ``(px, py)`` (N, H, W), pixel centres at
    integers. ``border``: ``"reflect101"`` mirrors about the outer pixel centres (OpenCV's
    BORDER_REFLECT_101), ``"symmetric"`` about the outer pixel edges (scipy's ``reflect``)."""
    h, w = x.shape[-2:]
    if border == "reflect101":
        grid = torch.stack((2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1), dim=-1)
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=True)
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)


def _zoom(x: Tensor, factor: float) -> Tensor:
    """Zoom into the centre by ``factor`` >= 1 (bilinear), keeping the size."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / factor
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _value_noise(n: int, h: int, w: int, decay: float, g: torch.Generator, octaves: int = 5) -> Tensor:
    """Multi-octave value noise in [0, 1]: octave k has 2**k cells a side and weight decay**-k."""
    out = torch.zeros(n, 1, h, w)
    total = 0.0
    for k in range(1, octaves + 1):
        cells = 2**k
        coarse = _rand((n, 1, cells + 1, cells + 1), g)
        amp = decay ** (-(k - 1))
        out += amp * F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        total += amp
    out = out / total
    lo = out.amin(dim=(1, 2, 3), keepdim=True)
    hi = out.amax(dim=(1, 2, 3), keepdim=True)
    return (out - lo) / (hi - lo).clamp_min(1e-6)


def _sev(values: Sequence, severity: int):  # type: ignore[no-untyped-def]
    return values[severity - 1]


# --- noise -------------------------------------------------------------------------------------

def gaussian_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Additive Gaussian noise (CIFAR-10-C std)."""
    c = _sev([0.04, 0.06, 0.08, 0.09, 0.10], severity)
    return x + c * _randn(x.shape, g).to(x.dtype)


def shot_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Poisson (photon) noise at ``c`` photons per unit intensity."""
    c = _sev([500, 250, 100, 75, 50], severity)
    return torch.poisson(x.double() * c, generator=g).to(x.dtype) / c


def impulse_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Salt-and-pepper noise on a fraction ``c`` of the values."""
    c = _sev([0.01, 0.02, 0.03, 0.05, 0.07], severity)
    u = _rand(x.shape, g)
    salt = _rand(x.shape, g) < 0.5
    hit = u < c
    return torch.where(hit, salt.to(x.dtype), x)


# --- blur --------------------------------------------------------------------------------------

def _disk(radius: float, alias_sigma: float) -> Tensor:
    r = max(1, math.ceil(radius))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).float()
    disk = disk / disk.sum()
    if alias_sigma > 0:  # soften the disk's aliased edge, as the reference does
        k = _gauss_kernel1d(alias_sigma)
        pad = len(k) // 2
        d = F.pad(disk[None, None], (pad, pad, pad, pad))
        d = F.conv2d(F.conv2d(d, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))[0, 0]
        disk = d / d.sum()
    return disk


def defocus_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Convolution with an anti-aliased disk (radius, alias blur) as in CIFAR-10-C."""
    radius, alias = _sev([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)], severity)
    return _filter(x, _disk(radius, alias))


def glass_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Gaussian blur, ``iterations`` rounds of random local pixel displacement (up to ``delta``
    pixels), Gaussian blur again (frosted glass)."""
    sigma, delta, iterations = _sev([(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)], severity)
    n, c, h, w = x.shape
    x = gaussian_blur(x, sigma)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    for _ in range(iterations):
        dy = torch.randint(-delta, delta + 1, (n, h, w), generator=g)
        dx = torch.randint(-delta, delta + 1, (n, h, w), generator=g)
        src = ((rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
        x = x.reshape(n, c, h * w).gather(2, src).view(n, c, h, w)
    return gaussian_blur(x, sigma)


MOTION_BLUR = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))
"""CIFAR-10-C's motion blur ``(radius, sigma)`` in pixels per severity (``make_cifar_c.py``)."""


def motion_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """ImageMagick's one-sided motion blur at a random angle in [-45, 45] degrees per image, with
    CIFAR-10-C's (radius, sigma) (see the module docstring)."""
    radius, sigma = _sev(MOTION_BLUR, severity)
    angles = _rand((x.shape[0],), g) * 90 - 45
    return _per_image_filter(x, _motion_kernels(angles, radius, sigma))


def zoom_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """The mean of the image and its centre zooms by 1.01 ... ``zmax`` (step 0.01)."""
    zmax = _sev([1.06, 1.11, 1.16, 1.21, 1.26], severity)
    zooms = [1 + 0.01 * k for k in range(1, round((zmax - 1) / 0.01))]
    out = x.clone()
    for z in zooms:
        out += _zoom(x, z)
    return out / (len(zooms) + 1)


# --- weather -----------------------------------------------------------------------------------

def snow(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Snowflakes: thresholded zoomed Gaussian noise, motion-blurred, added with its mirror image
    after dimming the picture towards a brightened copy (CIFAR-10-C parameters)."""
    loc, scale, zoom, threshold, radius, sigma, blend = _sev([
        (0.1, 0.2, 1.0, 0.6, 8, 3, 0.95), (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)], severity)
    n, c, h, w = x.shape
    layer = loc + scale * _randn((n, 1, h, w), g)
    layer = _zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    s = min(h, w) / 32
    layer = _per_image_filter(layer, _line_kernels(n, radius * s * 0.5, sigma * s, g)).to(x.dtype)
    gray = x.mean(dim=1, keepdim=True)
    base = blend * x + (1 - blend) * torch.maximum(x, gray * 1.5 + 0.5)
    return base + layer + layer.flip(-1).flip(-2)


def _frost_texture(n: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """Procedural frost: bright thresholded value noise streaked along random directions."""
    noise = _value_noise(n, h, w, 1.6, g, octaves=4)
    crystals = (noise - 0.45).clamp_min(0) / 0.55
    streaks = _per_image_filter(_rand((n, 1, h, w), g) ** 4, _line_kernels(n, max(2.0, h / 8), h / 8, g))
    tex = 0.6 * crystals + 0.8 * streaks
    return tex / tex.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def frost(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """``a * x + b * frost`` with the reference's weights (procedural frost texture)."""
    a, b = _sev([(1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)], severity)
    n, _, h, w = x.shape
    return a * x + b * _frost_texture(n, h, w, g).to(x.dtype)


def fog(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Fractal fog of strength ``a`` and roughness ``decay``, renormalized as in the reference."""
    a, decay = _sev([(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)], severity)
    n, _, h, w = x.shape
    mx = x.amax(dim=(1, 2, 3), keepdim=True)
    out = x + a * _value_noise(n, h, w, decay, g).to(x.dtype)
    return out * mx / (mx + a)


def brightness(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Raise the intensity (HSV value for colour images) by ``c``."""
    c = _sev([0.05, 0.1, 0.15, 0.2, 0.3], severity)
    if x.shape[1] != 3:
        return x + c
    v, _ = x.max(dim=1, keepdim=True)
    new_v = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * new_v / v.clamp_min(1e-6), x + c)


# --- digital -----------------------------------------------------------------------------------

def contrast(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Shrink the deviation from each image's mean to a fraction ``c``."""
    c = _sev([0.75, 0.5, 0.4, 0.3, 0.15], severity)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


ELASTIC = ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
"""CIFAR-10-C's elastic ``(alpha, sigma, affine)`` per severity, as fractions of the image size
(``make_cifar_c.py`` multiplies them by ``IMSIZE = 32``)."""


def elastic_transform(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """CIFAR-10-C's elastic transform (Simard et al., 2003, as the reference modifies it): a random
    affine warp, then a smooth random displacement field (see the module docstring)."""
    n, _, h, w = x.shape
    size = min(h, w)
    alpha, sigma, affine = (v * size for v in _sev(ELASTIC, severity))
    cx, cy, d = w // 2, h // 2, size // 3
    src = torch.tensor([[cx + d, cy + d], [cx + d, cy - d], [cx - d, cy - d]], dtype=torch.float64)
    dst = src + affine * (2 * _rand((n, 3, 2), g).double() - 1)
    # forward map: dst_i = M [src_i; 1]; the warped image at p is the input at M^-1 p (warpAffine)
    forward = torch.linalg.solve(torch.cat((src, torch.ones(3, 1, dtype=torch.float64)), 1), dst).transpose(1, 2)
    full = torch.cat((forward, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64).expand(n, 1, 3)), 1)
    inverse = torch.linalg.inv(full)[:, :2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pixels = torch.stack((xs, ys, torch.ones_like(xs)), 0).view(1, 3, h * w)
    src_xy = (inverse @ pixels).view(n, 2, h, w)
    x = _sample_pixels(x, src_xy[:, 0], src_xy[:, 1], "reflect101")
    if alpha > 0:
        field = alpha * _gaussian_filter_symmetric(2 * _rand((n, 2, h, w), g).double() - 1, sigma)
        x = _sample_pixels(x, xs + field[:, 0], ys + field[:, 1], "symmetric")
    return x


def pixelate(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Box-downsample to a fraction ``c`` of the size, then upsample with nearest neighbours."""
    c = _sev([0.95, 0.9, 0.85, 0.75, 0.65], severity)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * c)), max(1, int(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def jpeg_compression(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Encode and decode as JPEG at quality ``q`` (Pillow)."""
    from PIL import Image

    q = _sev([80, 65, 58, 50, 40], severity)
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for img in arr:
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=q)
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert(pil.mode))
        out.append(dec.reshape(img.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.dtype) / 255


for _group, _names in GROUPS.items():
    for _name in _names:
        CORRUPTIONS.register(_name, globals()[_name.replace("-", "_")], group=_group,
                             paper="Hendrycks & Dietterich, 2019")


def corrupt(
    x: Tensor,
    name: str,
    severity: int,
    generator: torch.Generator | None = None,
    *,
    quantize: bool = True,
) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1-5) to images ``x`` (N, C, H, W) in [0, 1].

    Args:
        x: the clean images (any float dtype; computed on the CPU).
        name: a name in :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (severe).
        generator: the randomness; default a generator seeded with 0.
        quantize: round to 8-bit levels, as the stored ``-C`` datasets are.

    Raises:
        UnknownNameError: for an unknown corruption (listing the known ones).
        InputError: for a severity outside 1-5 or images not in [0, 1] NCHW.
    """
    fn = CORRUPTIONS.get(name)
    if severity not in SEVERITIES:
        raise InputError(f"severity must be one of 1, 2, 3, 4, 5, got {severity!r}")
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise InputError(f"corrupt expects a float (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise InputError("images must lie in [0, 1]; scale them before corrupting (x / 255 for uint8)")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    device, dtype = x.device, x.dtype
    out = fn(x.detach().to("cpu", torch.float32), severity, g).clamp(0, 1)
    if quantize:
        out = (out * 255).round() / 255
    return out.to(device, dtype)


def corruption_seed(name: str, severity: int, seed: int = 0) -> int:
    """A stable per-(corruption, severity) seed, so every subset of a ``-C`` set is reproducible."""
    key = name.strip().lower().replace("_", "-")
    return (seed * 1_000_003 + zlib.crc32(key.encode()) * 11 + severity) % (2**63)


__all__ = [
    "CORRUPTIONS",
    "ELASTIC",
    "GROUPS",
    "MOTION_BLUR",
    "NAMES",
    "SEVERITIES",
    "Corruption",
    "corrupt",
    "corruption_seed",
    "gaussian_blur",
]
