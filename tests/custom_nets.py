"""Nets written outside kdjax, as a user writes them: ``--config.model=tests.custom_nets:small_cnn``
(tests/test_custom_data.py imports them by module path only)."""

import flax.linen as nn
import jax.numpy as jnp

from kdjax.models import ModelOutput


class SmallCNN(nn.Module):
  """Two convolutions with BatchNorm, global average pooling, a linear head: logits only."""
  num_classes: int
  width: int = 16

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, features in enumerate((self.width, 2 * self.width)):
      x = nn.Conv(features, (3, 3), strides=(1 + i, 1 + i), use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def small_cnn(num_classes: int) -> nn.Module:
  """The factory ``--config.model=tests.custom_nets:small_cnn`` names."""
  return SmallCNN(num_classes)


class FlatMLP(nn.Module):
  """A head on the flattened 32x32 image: takes no other size."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return ModelOutput(nn.Dense(self.num_classes)(x.reshape(x.shape[0], 32 * 32 * 3)), [x], None,
                       None)


def flat_mlp(num_classes: int, **unused) -> nn.Module:
  return FlatMLP(num_classes)


class NoLogits(nn.Module):
  """Returns a dict, not logits."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return {'scores': nn.Dense(3)(x.mean(axis=(1, 2)))}


def no_logits(num_classes: int) -> nn.Module:
  del num_classes
  return NoLogits()
