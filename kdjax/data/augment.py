"""The standard CIFAR augmentation, as pure jittable functions on uint8 NHWC batches.

mdistiller / RepDistiller train with ``RandomCrop(32, padding=4)`` (zero padding),
``RandomHorizontalFlip()`` and ``Normalize(mean, std)``. Here the same runs inside the
jitted train step: each example draws its crop offsets ``(dy, dx)`` uniformly from
``{0, ..., 2 * padding}`` and flips with probability 1/2, from its own key.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def random_crop(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
  """Zero-pads each image by ``padding`` pixels and crops back at a random offset."""
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1, :], images)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> jax.Array:
  """uint8 [0, 255] -> ``(x / 255 - mean) / std`` per channel."""
  x = images.astype(jnp.float32) / 255.0
  return ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


def train_transform(key: jax.Array, images: jax.Array, *, mean, std, crop_padding: int,
                    flip: bool, dtype=jnp.float32) -> jax.Array:
  """Crop (if ``crop_padding > 0``), flip (if ``flip``), normalise: the training input."""
  crop_key, flip_key = jax.random.split(key)
  if crop_padding > 0:
    images = random_crop(crop_key, images, crop_padding)
  if flip:
    images = random_flip(flip_key, images)
  return normalize(images, mean, std, dtype)
