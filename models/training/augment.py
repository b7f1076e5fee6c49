"""Training augmentation for slices from other scanners and views, as one warp per image.

Flips and rotations as the paper did, plus zoom and shift (crop and scale variation),
blur, a smooth intensity bias, contrast and gamma. Blur matters beyond other scanners'
sharpness: in the 253-slice set the tumour slices are the blurrier ones (median relative
Laplacian energy at a common scale 0.145 against 0.20), so a model trained without it
calls a blurred healthy slice a tumour (``models.training.shifts``). The geometric part is one
affine matrix per image applied by one bilinear resampling: cheaper than one pass per
transform (training is compute-bound on 2 cores), and it blurs the slice once, not thrice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms, each drawn uniformly and independently."""

    rotation: float = 0.5  # fraction of a full turn, either way
    zoom: float = 0.15  # the sampled area's side is scaled by 1 +- zoom
    shift: float = 0.08  # fraction of the side, along each axis
    contrast: float = 0.3  # deviation from the image mean is scaled by 1 +- contrast
    log_gamma: float = 0.4  # intensity ** exp(+-log_gamma)
    blur: float = 0.5  # share of images blended with their Gaussian blur (weight U(0, 1))
    blur_sigma: float = 2.0  # pixels at the model input
    bias: float = 0.3  # multiplicative linear ramp, up to 1 +- bias at the far corners
    # Scanner effects, off unless a recipe asks (models.training.train.TrainConfig):
    smooth_bias: float = 0.0  # s.d. of a smooth log-gain field (a coil's bias field)
    noise: float = 0.0  # Rician noise, s.d. up to this fraction of full scale
    resolution: float = 1.0  # acquired at up to this factor coarser, then resized back
    curves: float = 0.0  # blend with a random monotone intensity curve, weight up to this


def affine_transforms(angle: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor, flip: tf.Tensor,
                      height: int, width: int) -> tf.Tensor:
    """Per-image (N, 8) transforms for ``tf.raw_ops.ImageProjectiveTransformV3``.

    Each maps an output pixel ``p`` to the input point ``c + F R s (p - shift - c)``: shift
    by ``shift`` (N, 2) pixels (x, y), zoom by ``scale`` (N,) about the centre ``c``, rotate
    by ``angle`` (N,) radians, then flip where ``flip`` (N, 2) is -1 (x, y).
    """
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    fx, fy = flip[:, 0], flip[:, 1]
    a00, a01, a10, a11 = fx * cos, -fx * sin, fy * sin, fy * cos
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    ux, uy = shift[:, 0] + cx, shift[:, 1] + cy
    b0 = cx - (a00 * ux + a01 * uy)
    b1 = cy - (a10 * ux + a11 * uy)
    zeros = tf.zeros_like(angle)
    return tf.stack([a00, a01, b0, a10, a11, b1, zeros, zeros], axis=1)


def warp(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """Bilinear resampling of (N, H, W, C) float ``images``; outside points are black."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")


def gaussian_blur(images: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of (N, H, W, C) images, zero padded."""
    if sigma <= 0:
        raise ValueError(f"blur sigma must be positive, got {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * (t / sigma) ** 2)
    k = k / tf.reduce_sum(k)
    channels = images.shape[-1]
    kx = tf.tile(tf.reshape(k, (1, -1, 1, 1)), (1, 1, channels, 1))
    ky = tf.tile(tf.reshape(k, (-1, 1, 1, 1)), (1, 1, channels, 1))
    x = tf.nn.depthwise_conv2d(images, kx, (1, 1, 1, 1), "SAME")
    return tf.nn.depthwise_conv2d(x, ky, (1, 1, 1, 1), "SAME")


def bias_field(n: tf.Tensor, height: int, width: int, bias: float) -> tf.Tensor:
    """(N, H, W, 1) multiplicative fields: a linear ramp in a random direction whose
    strength is drawn from U(-bias, bias) per image; it reaches 1 +- strength at the far
    corners of a diagonal ramp and 1 +- 0.71 strength at the edges of an axis-aligned one."""
    angle = tf.random.uniform((n, 1, 1, 1), 0.0, 2 * math.pi)
    strength = tf.random.uniform((n, 1, 1, 1), -bias, bias)
    yy = tf.reshape(tf.linspace(-1.0, 1.0, height), (1, height, 1, 1))
    xx = tf.reshape(tf.linspace(-1.0, 1.0, width), (1, 1, width, 1))
    ramp = (tf.cos(angle) * xx + tf.sin(angle) * yy) / math.sqrt(2.0)
    return 1.0 + strength * ramp


def smooth_bias_field(n: tf.Tensor, height: int, width: int, sd: float) -> tf.Tensor:
    """(N, H, W, 1) multiplicative fields exp(g), g a 4x4 grid of N(0, sd) values resized
    bicubically: the slow, non-linear shading of a receive coil."""
    grid = tf.random.normal((n, 4, 4, 1), 0.0, sd)
    return tf.exp(tf.image.resize(grid, (height, width), method="bicubic"))


def rician_noise(x: tf.Tensor, n: tf.Tensor, level: float) -> tf.Tensor:
    """Magnitude of the image plus complex Gaussian noise, s.d. U(0, level) x 255."""
    sd = tf.random.uniform((n, 1, 1, 1), 0.0, level * 255.0)
    real = x + sd * tf.random.normal(tf.shape(x))
    imag = sd * tf.random.normal(tf.shape(x))
    return tf.sqrt(real * real + imag * imag)


def coarser(x: tf.Tensor, factor: float) -> tf.Tensor:
    """The batch as acquired up to ``factor`` times coarser (one random factor per
    batch), resized back: thick slices, a low matrix or an upscaled export."""
    height, width = x.shape[1], x.shape[2]
    f = tf.random.uniform((), 1.0, factor)
    size = tf.cast(tf.round(tf.constant([height, width], tf.float32) / f), tf.int32)
    return tf.image.resize(tf.image.resize(x, size, method="area"), (height, width),
                           method="bilinear")


def intensity_curves(x: tf.Tensor, n: tf.Tensor, strength: float, knots: int = 4
                     ) -> tf.Tensor:
    """Each image through its own random monotone piecewise-linear curve on [0, 255],
    blended with the identity by a weight U(0, strength): another sequence's or
    scanner's grey-level mapping, which gamma alone (one bend) does not cover."""
    steps = tf.random.uniform((n, knots), 0.05, 1.0)
    curve = tf.concat([tf.zeros((n, 1)), tf.cumsum(steps, axis=1)], axis=1)
    curve = curve / curve[:, -1:]
    identity = tf.linspace(0.0, 1.0, knots + 1)[None]
    w = tf.random.uniform((n, 1), 0.0, strength)
    curve = (1 - w) * identity + w * curve  # (N, knots + 1) values at the knots
    t = tf.clip_by_value(x / 255.0, 0.0, 1.0) * knots
    i = tf.minimum(tf.cast(tf.floor(t), tf.int32), knots - 1)
    flat = tf.reshape(i, (n, -1))
    lo = tf.reshape(tf.gather(curve, flat, batch_dims=1), tf.shape(x))
    hi = tf.reshape(tf.gather(curve, flat + 1, batch_dims=1), tf.shape(x))
    return 255.0 * (lo + (t - tf.cast(i, tf.float32)) * (hi - lo))


def scanner_effects(x: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """Resolution, coil shading, noise and intensity curve, each when its range is set."""
    n = tf.shape(x)[0]
    if aug.resolution > 1.0:
        x = coarser(x, aug.resolution)
    if aug.smooth_bias > 0:
        x = x * smooth_bias_field(n, x.shape[1], x.shape[2], aug.smooth_bias)
    if aug.noise > 0:
        x = rician_noise(x, n, aug.noise)
    x = tf.clip_by_value(x, 0.0, 255.0)
    if aug.curves > 0:
        x = intensity_curves(x, n, aug.curves)
    return x


def augment(images: tf.Tensor, aug: Augmentation = Augmentation()) -> tf.Tensor:
    """Randomly transformed copies of a batch of (N, H, W, C) images in [0, 255]."""
    images = tf.convert_to_tensor(images, tf.float32)
    n = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]

    def uniform(shape, bound):
        return tf.random.uniform(shape, -bound, bound)

    angle = uniform((n,), aug.rotation * 2 * math.pi)
    scale = 1.0 + uniform((n,), aug.zoom)
    shift = uniform((n, 2), aug.shift) * tf.constant([width, height], tf.float32)
    # Each axis on its own, so slices are mirrored too (Keras' RandomFlip draws one value
    # for both axes: a half turn, which the rotation already covers).
    flip = tf.where(tf.random.uniform((n, 2)) < 0.5, -1.0, 1.0)
    x = warp(images, affine_transforms(angle, scale, shift, flip, height, width))
    if aug.blur > 0:
        weight = tf.random.uniform((n, 1, 1, 1)) * tf.cast(
            tf.random.uniform((n, 1, 1, 1)) < aug.blur, tf.float32)
        x = x + weight * (gaussian_blur(x, aug.blur_sigma) - x)
    if aug.bias > 0:
        x = tf.clip_by_value(x * bias_field(n, height, width, aug.bias), 0.0, 255.0)
    x = scanner_effects(x, aug)
    mean = tf.reduce_mean(x, axis=(1, 2), keepdims=True)
    x = tf.clip_by_value((x - mean) * (1.0 + uniform((n, 1, 1, 1), aug.contrast)) + mean,
                         0.0, 255.0)
    gamma = tf.exp(uniform((n, 1, 1, 1), aug.log_gamma))
    return 255.0 * tf.pow(x / 255.0, gamma)
