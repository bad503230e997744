"""CRD: contrastive representation distillation (Tian et al., ICLR 2020), as mdistiller's
``mdistiller/distillers/CRD.py`` with its CIFAR sampler (``CIFAR100InstanceSample``, mode
``exact``).

    v_s = E_s(S.embedding),  v_t = E_t(T.embedding)
    loss = ce_weight * CE(y, S) + feat_weight * (NCE(v_s; M_t) + NCE(v_t; M_s))

* ``E_s``, ``E_t``: learned embedding heads (Linear to ``feat_dim`` + L2 normalisation,
  :class:`~kdjax.methods.connectors.Embed`; learning nets ``embed_s`` and ``embed_t``) on the
  pooled pre-logit vectors (mdistiller's ``pooled_feat``);
* ``M_s``, ``M_t``: memory banks of one embedding per training example, in
  ``state.extra['crd']``; each view is scored against the other's bank at the example itself
  and ``nce_k`` negatives, and the rows of the batch are then updated with momentum
  ``nce_momentum`` (:func:`kdjax.losses.crd`, temperature ``nce_temperature``);
* negatives are drawn uniformly among the training examples of *other* classes than the
  example's (:func:`other_class_sampler`): without replacement, as the ``exact`` mode of
  mdistiller's CIFAR-100 data set, or, with ``with_replacement`` (the ImageNet presets), with
  replacement, as mdistiller's ImageNet one (``ImageNetInstanceSample``,
  ``mdistiller/dataset/imagenet.py`` line 62: ``np.random.choice(cls_negative[target], k,
  replace=True)``); the banks are indexed by ``Batch.indices``, the training-set indices.

Defaults (``CFG.CRD``): CE 1.0, feat 0.8, feat_dim 128, 16384 negatives, momentum 0.5,
temperature 0.07, without replacement. The banks have one row per training example: the
builder gets the training set's labels (``BuildInputs.train_labels``, ``INFO.inputs``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import losses
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher
from kdjax.methods.connectors import Embed
from kdjax.methods.distiller import distillation_method


def other_class_sampler(labels: np.ndarray, num_classes: int, with_replacement: bool = False):
  """``sample(key, idx, y, k) -> (B, k + 1)`` contrast indices: ``idx``, then ``k`` negatives.

  ``with_replacement``: every row draws with replacement, as mdistiller's
  ``ImageNetInstanceSample`` (``replace=True``): ``k`` draws per row instead of a top-k over
  the whole training set (1.28 M keys per row on ImageNet). Otherwise as mdistiller's
  ``CIFAR100InstanceSample`` (``np.random.choice(cls_negative[y], k,
  replace=k > len(cls_negative[y]))``): the ``k`` negatives of an example are drawn uniformly
  among the training examples whose label is not ``y``, **without replacement**: each row
  gives every training example a uniform random key, its own class the largest, and takes the
  ``k`` smallest. Only when some class has fewer than ``k`` other-class examples (never on
  CIFAR with the default 16384) are all rows drawn with replacement: ``r`` uniform in
  ``[0, N - count[y])``, skipping class ``y``'s block of the class-sorted indices.
  """
  labels = np.asarray(labels, np.int64)
  counts_np = np.bincount(labels, minlength=num_classes)
  size = len(labels)
  label_row = jnp.asarray(labels, jnp.int32)[None, :]
  order = jnp.asarray(np.argsort(labels, kind='stable'), jnp.int32)
  counts = jnp.asarray(counts_np, jnp.int32)
  starts = jnp.asarray(np.cumsum(counts_np) - counts_np, jnp.int32)

  def distinct(key, y, k):
    keys = jax.random.uniform(key, (y.shape[0], size))
    keys = jnp.where(label_row == y[:, None], 2.0, keys)  # uniform keys are < 1
    return jax.lax.top_k(-keys, k)[1].astype(jnp.int32)

  def repeating(key, y, k):
    count, start = counts[y][:, None], starts[y][:, None]
    r = jax.random.randint(key, (y.shape[0], k), 0, size - count, dtype=jnp.int32)
    return order[jnp.where(r >= start, r + count, r)]

  def sample(key, idx, y, k):
    exact = not with_replacement and k <= size - counts_np.max()
    draw = distinct if exact else repeating
    return jnp.concatenate([jnp.asarray(idx, jnp.int32)[:, None], draw(key, y, k)], axis=1)

  return sample


INFO = MethodInfo('CRD', inputs=lambda config: ('train_labels',),
                  net_outputs=('embedding',))


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher = student_and_teacher(config, inputs)
  c = config.crd
  num_data = len(inputs.train_labels)
  sample = other_class_sampler(inputs.train_labels, inputs.num_classes, c.with_replacement)
  s_emb = inputs.output_shapes(student).embedding
  t_emb = inputs.output_shapes(teacher).embedding
  embed_s = Embed(s_emb.shape[-1], c.feat_dim, dtype=inputs.dtype)
  embed_t = Embed(t_emb.shape[-1], c.feat_dim, dtype=inputs.dtype)

  def init_extra(key):
    return {'crd': losses.crd_memory_init(key, num_data, c.feat_dim)._asdict()}

  def terms(run, out, batch, ctx):
    v_s = run('embed_s', out.embedding)
    v_t = run('embed_t', ctx.teacher.embedding)
    contrast_idx = sample(ctx.rng, batch.indices, batch.labels, c.nce_k)
    crd, memory = losses.crd(v_s, v_t, losses.CRDMemory(**run.extra['crd']), batch.indices,
                             contrast_idx, temperature=c.nce_temperature,
                             momentum=c.nce_momentum)
    run.extra['crd'] = memory._asdict()
    return {'crd': c.feat_weight * crd}

  return distillation_method('crd', student, teacher, ce_weight=c.ce_weight, terms=terms,
                             optimizer=inputs.optimizer, init_extra=init_extra,
                             connectors={'embed_s': (embed_s, s_emb), 'embed_t': (embed_t, t_emb)})


def default_config() -> ml_collections.ConfigDict:
  """``config.crd``: mdistiller's ``CFG.CRD``."""
  return ml_collections.ConfigDict({'ce_weight': 1.0, 'feat_weight': 0.8, 'feat_dim': 128,
                                    'nce_k': 16384, 'nce_momentum': 0.5,
                                    'nce_temperature': 0.07, 'with_replacement': False})
