"""PyTorch (RepDistiller / mdistiller) state dicts <-> kdjax variables.

The zoo names its Flax modules after the PyTorch modules, so the variable at Flax path
``('layer1', '0', 'conv1', 'kernel')`` is the PyTorch tensor ``layer1.0.conv1.weight``.
The mapping of leaf names and layouts is:

==============================  =======================  ==========================
kdjax collection / leaf          PyTorch key suffix       layout change
==============================  =======================  ==========================
params  .../kernel (4-D conv)    .weight (OIHW)           -> HWIO (grouped and
                                                            depthwise convs alike)
params  .../kernel (2-D dense)   .weight (out, in)        -> (in, out)
params  .../bias                 .bias                    none
params  .../scale (BatchNorm)    .weight                  none
batch_stats .../mean             .running_mean            none
batch_stats .../var              .running_var             none
(none)                           .num_batches_tracked     consumed, unused; exported
                                                           as steps x applications
==============================  =======================  ==========================

Every key of the state dict must be consumed and every kdjax variable filled; anything
else is a :class:`~kdjax.errors.KdjaxError` naming the first offending key.
:func:`state_dict_from_variables` (``kdjax-export --format torch``) is the exact inverse,
through the same table (:func:`~kdjax.teachers.torch_import.torch_layout`).
"""

from kdjax.convert.torch_export import save_pth, state_dict_from_variables
from kdjax.teachers.torch_import import load_pth, variables_from_torch

__all__ = ['load_pth', 'save_pth', 'state_dict_from_variables', 'variables_from_torch']
