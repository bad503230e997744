"""Distillation losses: pure, jit-able functions on arrays, in the style of ``optax.losses``.

Each function is a port of the corresponding loss of megvii-research/mdistiller
(``mdistiller/distillers/*.py``) and documents its formula and source. Conventions:

* student argument first, then teacher, then the rest in mdistiller's order and with its
  keyword names (``temperature``, ``alpha``, ``beta``, ``p``, ``distance_weight``, ...);
  defaults are mdistiller's defaults for parameters of the loss itself, while weights that
  multiply a whole loss (``CE_WEIGHT``, ``FEAT_WEIGHT``, warm-ups) belong to the methods;
* feature maps are NHWC;
* reductions run in at least float32 and scalar losses come back in the student input's
  dtype;
* multi-stage losses (:func:`at`, :func:`nst`, :func:`sp`, :func:`hcl`) *sum* over the
  stage pairs, as mdistiller does; ``single_stage_*`` give one term;
* stateful CRD is a pure function of an explicit :class:`CRDMemory`, returned updated.

Example::

  from kdjax import losses
  loss = losses.kd(student_logits, teacher_logits, temperature=4.0)

Modules: :mod:`~kdjax.losses.logits` (``cross_entropy``, ``kd``, ``dkd``),
:mod:`~kdjax.losses.features` (``fitnet``, ``at``, ``nst``, ``ofd``, ``hcl``),
:mod:`~kdjax.losses.relations` (``sp``, ``rkd``, ``pkt``),
:mod:`~kdjax.losses.contrastive` (``crd``).
"""

from kdjax.losses.contrastive import CRDMemory, crd, crd_memory_init, crd_sample_indices
from kdjax.losses.features import (at, fitnet, hcl, nst, ofd, ofd_margin, single_stage_at,
                                   single_stage_hcl, single_stage_nst)
from kdjax.losses.logits import cross_entropy, dkd, kd
from kdjax.losses.relations import pkt, rkd, single_stage_sp, sp

__all__ = [
    'cross_entropy',
    'kd',
    'dkd',
    'fitnet',
    'at',
    'single_stage_at',
    'sp',
    'single_stage_sp',
    'rkd',
    'pkt',
    'nst',
    'single_stage_nst',
    'ofd',
    'ofd_margin',
    'hcl',
    'single_stage_hcl',
    'crd',
    'CRDMemory',
    'crd_memory_init',
    'crd_sample_indices',
]
