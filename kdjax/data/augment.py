"""The standard CIFAR augmentation, as pure jittable functions on uint8 NHWC batches.

mdistiller / RepDistiller train with ``RandomCrop(32, padding=4)`` (zero padding),
``RandomHorizontalFlip()`` and ``Normalize(mean, std)``. Here the same runs inside the
jitted train step: each example draws its crop offsets ``(dy, dx)`` uniformly from
``{0, ..., 2 * padding}`` and flips with probability 1/2, from its own key.

The augmentation is discrete: with padding ``p`` an image has ``(2p + 1)^2`` crops, each
flipped or not, so ``num_variants = (2p + 1)^2 * (2 if flip else 1)`` variants (162 for
CIFAR's ``p = 4``). :func:`draw_augmentation` returns what :func:`train_transform` draws from a
key (the same random stream), and :func:`variant_index` numbers it
``v = (dy * (2p + 1) + dx) * F + flipped`` with ``F = 2`` with flips, else 1: the teacher-logit
cache (:mod:`kdjax.teachers.logit_cache`) stores one row per variant in that order.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp


class Augmentation(NamedTuple):
  """What the augmentation drew for each image of a batch."""
  offsets: jax.Array  # (n, 2) int32 crop offsets (dy, dx) in {0, ..., 2p}; zeros without crop
  flips: jax.Array  # (n,) bool: mirrored left-right


def crop_offsets(key: jax.Array, n: int, padding: int) -> jax.Array:
  """``(n, 2)`` offsets ``(dy, dx)``, each uniform in ``{0, ..., 2 * padding}``."""
  return jax.random.randint(key, (n, 2), 0, 2 * padding + 1)


def flip_draws(key: jax.Array, n: int) -> jax.Array:
  """``(n,)`` booleans, each true with probability 1/2."""
  return jax.random.bernoulli(key, 0.5, (n, 1, 1, 1)).reshape(n)


def crop(images: jax.Array, offsets: jax.Array, padding: int) -> jax.Array:
  """Zero-pads each image by ``padding`` pixels and crops back at its offset ``(dy, dx)``."""
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def one(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(one)(padded, offsets)


def mirror(images: jax.Array, flips: jax.Array) -> jax.Array:
  """Mirrors left-right the images whose ``flips`` entry is true."""
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)


def random_crop(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
  """Zero-pads each image by ``padding`` pixels and crops back at a random offset."""
  return crop(images, crop_offsets(key, images.shape[0], padding), padding)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  return mirror(images, flip_draws(key, images.shape[0]))


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> jax.Array:
  """uint8 [0, 255] -> ``(x / 255 - mean) / std`` per channel."""
  x = images.astype(jnp.float32) / 255.0
  return ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


def draw_augmentation(key: jax.Array, n: int, *, crop_padding: int,
                      flip: bool) -> Augmentation:
  """What :func:`train_transform` draws from ``key`` for ``n`` images (offsets zero without a
  crop, no flips without ``flip``)."""
  crop_key, flip_key = jax.random.split(key)
  offsets = (crop_offsets(crop_key, n, crop_padding) if crop_padding > 0
             else jnp.zeros((n, 2), jnp.int32))
  flips = flip_draws(flip_key, n) if flip else jnp.zeros((n,), bool)
  return Augmentation(offsets, flips)


def augment(images: jax.Array, aug: Augmentation, *, crop_padding: int, flip: bool) -> jax.Array:
  """The crop (if ``crop_padding > 0``) and the flip (if ``flip``) ``aug`` holds, applied."""
  if crop_padding > 0:
    images = crop(images, aug.offsets, crop_padding)
  if flip:
    images = mirror(images, aug.flips)
  return images


def train_transform(key: jax.Array, images: jax.Array, *, mean, std, crop_padding: int,
                    flip: bool, dtype=jnp.float32) -> jax.Array:
  """Crop (if ``crop_padding > 0``), flip (if ``flip``), normalise: the training input."""
  aug = draw_augmentation(key, images.shape[0], crop_padding=crop_padding, flip=flip)
  return normalize(augment(images, aug, crop_padding=crop_padding, flip=flip), mean, std, dtype)


def num_variants(crop_padding: int, flip: bool) -> int:
  """How many distinct augmentations an image has: ``(2p + 1)^2 * (2 if flip else 1)``."""
  return (2 * crop_padding + 1) ** 2 * (2 if flip else 1)


def variant_index(aug: Augmentation, *, crop_padding: int, flip: bool) -> jax.Array:
  """``(n,)`` int32 variant numbers ``(dy * (2p + 1) + dx) * F + flipped`` (module docstring)."""
  side, per_crop = 2 * crop_padding + 1, 2 if flip else 1
  crop_id = aug.offsets[:, 0] * side + aug.offsets[:, 1]
  return (crop_id * per_crop + aug.flips.astype(jnp.int32)).astype(jnp.int32)


def variant_augmentation(variants: jax.Array, *, crop_padding: int, flip: bool) -> Augmentation:
  """The :class:`Augmentation` of variant numbers ``variants``: :func:`variant_index` inverted."""
  side, per_crop = 2 * crop_padding + 1, 2 if flip else 1
  crop_id = variants // per_crop
  offsets = jnp.stack([crop_id // side, crop_id % side], axis=-1).astype(jnp.int32)
  return Augmentation(offsets, variants % per_crop == 1)
