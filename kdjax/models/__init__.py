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

__all__ = ['CIFAR_IMAGE_SHAPE', 'IMAGE_SHAPES', 'ModelOutput', 'check', 'create', 'names',
           'output_shapes', 'register', 'user', 'variable_shapes']
