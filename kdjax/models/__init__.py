"""The model zoos of RepDistiller / mdistiller, layer for layer, in Flax linen.

    >>> from kdjax import models
    >>> model = models.create('resnet8x4', num_classes=100)
    >>> out = model.apply(variables, images_nhwc, train=False)
    >>> out.logits, out.features, out.preact_features, out.embedding

Two zoos, as in mdistiller: ``'cifar'`` (the default; names are ``cifar_model_dict``'s keys,
32x32 images) and ``'imagenet'`` (``imagenet_model_dict``'s ``ResNet18``, ``ResNet34``,
``ResNet50``, ``ResNet101`` and ``MobileNetV1``, 224x224 images), e.g.
``models.create('ResNet50', 1000, zoo='imagenet')``. The zoos share names (``ResNet18``,
``ResNet50``) for different networks, so the zoo is part of a model's identity.
:data:`IMAGE_SHAPES` gives each zoo's image shape.

Every model accepts ``dtype`` (the computation dtype; parameters stay float32) and
``bn_groups`` (BatchNorm statistics per group of the batch, see
:class:`kdjax.models.layers.BatchNorm`); models with residual blocks also
``materialize_residuals`` (:func:`kdjax.models.layers.materialize`, a CPU speed setting that
changes no result). ``models.create('my_package.nets:make_net', 10)`` builds your own net
instead (:mod:`kdjax.models.user`).
"""

from __future__ import annotations

from kdjax.data.custom import is_custom
from kdjax.data.image_sources import HOST_DATASETS
from kdjax.errors import KdjaxError
from kdjax.models.base import (CIFAR_IMAGE_SHAPE, ModelOutput, output_shapes,  # noqa: F401
                               variable_shapes)
from kdjax.models.registry import IMAGE_SHAPES, check, create, names, register  # noqa: F401
from kdjax.models import user  # noqa: F401

# Importing the families registers their models (order = mdistiller's listing).
from kdjax.models import resnet  # noqa: F401
from kdjax.models import resnetv2  # noqa: F401
from kdjax.models import wrn  # noqa: F401
from kdjax.models import vgg  # noqa: F401
from kdjax.models import mobilenetv2  # noqa: F401
from kdjax.models import shufflenetv1  # noqa: F401
from kdjax.models import shufflenetv2  # noqa: F401
from kdjax.models import imagenet_resnet  # noqa: F401
from kdjax.models import mobilenetv1  # noqa: F401

def check_config(config, nets: tuple) -> None:
  """Raises :class:`~kdjax.errors.KdjaxError` unless ``config.zoo`` is a zoo,
  ``config.model`` one of its models (or your own net, :func:`check`), and the data's images
  the zoo's size: a host dataset's or your own data's ``config.data.image_size`` (any size
  when all of the run's ``nets`` are your own); a built-in dataset held on the devices is
  32x32, for the cifar zoo; ``config.data.crop_padding`` pads within the image."""
  zoo, d = config.zoo, config.data
  if zoo not in IMAGE_SHAPES:
    raise KdjaxError(f'unknown model zoo {zoo!r} (config.zoo); expected one of: '
                     f'{", ".join(IMAGE_SHAPES)}')
  check(config.model, zoo, 'config.model')
  size, custom = IMAGE_SHAPES[zoo][0], is_custom(d.name)
  if d.name in HOST_DATASETS or custom:
    if d.image_size != size and not all(map(user.is_spec, nets)):
      raise KdjaxError(f'config.data.image_size is {d.image_size}, but the {zoo} zoo\'s '
                       f'models take {size}x{size} images: set --config.data.image_size={size}')
  elif zoo != 'cifar':
    raise KdjaxError(f'the {zoo} zoo\'s models take {size}x{IMAGE_SHAPES[zoo][1]} images, '
                     f'and {d.name} is 32x32: set --config.zoo=cifar')
  # every built-in dataset held on the devices is 32x32
  image = d.image_size if custom else CIFAR_IMAGE_SHAPE[0]
  if not 0 <= d.crop_padding <= image:
    raise KdjaxError(f'config.data.crop_padding must be between 0 and the image size {image}, '
                     f'got {d.crop_padding}')


__all__ = ['CIFAR_IMAGE_SHAPE', 'IMAGE_SHAPES', 'ModelOutput', 'check', 'check_config', 'create',
           'names', 'output_shapes', 'register', 'user', 'variable_shapes']
