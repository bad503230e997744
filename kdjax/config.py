"""The configuration every kdjax run starts from: defaults and presets.

Experiment files (``experiments/*.py``) start from :func:`base_config` and override what
their method needs; ``python -m kdjax.main --config experiments/x.py:preset
--config.a.b=value`` then overrides single fields. :func:`kdjax.plan.validate` turns every
mistake a user can make into one :class:`~kdjax.errors.KdjaxError` line, before anything is
written (each module checks the block it owns).

Defaults are mdistiller's CIFAR recipe: SGD (momentum 0.9, weight decay 5e-4 on every
parameter, BatchNorm included), lr 0.05, batch 64, 240 epochs, lr x0.1 at epochs 150, 180
and 210.
"""

from __future__ import annotations

import ml_collections

from kdjax import methods, platform_tuning, presets
from kdjax.errors import KdjaxError
from kdjax.teachers import zoo as teacher_zoo


def base_config() -> ml_collections.ConfigDict:
  """The defaults shared by every method (mdistiller's CIFAR-100 recipe)."""
  c = ml_collections.ConfigDict()
  c.method = 'vanilla'
  c.seed = 0
  c.model = 'resnet32x4'  # the net being trained: the student, or the teacher for vanilla
  # The model zoo of config.model and config.teacher.model (kdjax.models.IMAGE_SHAPES): 'cifar'
  # (32x32 images) or 'imagenet' (224x224).
  c.zoo = 'cifar'

  c.data = ml_collections.ConfigDict()
  c.data.name = 'cifar100'
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.download = True
  # Where cifar10/cifar100's binary archive comes from (kdjax/data/cifar.py): None is the
  # official www.cs.toronto.edu URL and its SHA-256; a mirror (http(s)://, file:// or a local
  # path) needs the sha256 of the archive it serves. data_dir (else $KDJAX_CACHE, else
  # ~/.cache/kdjax) is where it is cached.
  c.data.url = ml_collections.FieldReference(None, field_type=str)
  c.data.sha256 = ml_collections.FieldReference(None, field_type=str)
  c.data.crop_padding = 4
  c.data.flip = True
  # Training examples held out (stratified, fixed) as the quiz set of meta-learning
  # methods (SKD); they are never trained on. 0: none.
  c.data.holdout = 0
  # Datasets too large for the devices (data.HOST_DATASETS: imagenet, read from data_dir;
  # kdjax/data/host_pipeline.py): grain workers decode and augment on the host,
  # RandomResizedCrop(image_size) + flip for training, Resize(resize_size) +
  # CenterCrop(image_size) for evaluation; workers: grain worker processes (None: one per
  # CPU less one; 0: decode in the training process). crop_padding and flip are unused there.
  c.data.image_size = 224
  c.data.resize_size = 256
  c.data.workers = ml_collections.FieldReference(None, field_type=int)
  # Your own data (kdjax/data/custom.py, docs/custom.md): name 'folder' (an ImageFolder in
  # data_dir) or 'tfds:<name>' (a TFDS dataset prepared as ArrayRecord in data_dir), made
  # image_size square; placement 'auto' holds it on the devices when it fits in a quarter
  # of their memory, else streams it ('device' / 'host' to choose); mean / std: None, from the
  # training split; train_split / test_split: None, train and val (folder) or train and test
  # (tfds); image_key / label_key: the tfds features; skip_unreadable: leave out (and count)
  # images Pillow cannot read instead of stopping.
  c.data.placement = 'auto'
  c.data.mean = ml_collections.FieldReference(None, field_type=tuple)
  c.data.std = ml_collections.FieldReference(None, field_type=tuple)
  c.data.train_split = ml_collections.FieldReference(None, field_type=str)
  c.data.test_split = ml_collections.FieldReference(None, field_type=str)
  c.data.image_key, c.data.label_key = 'image', 'label'
  c.data.skip_unreadable = False

  c.batch_size = 64  # global, over all devices
  c.eval_batch_size = 256
  c.num_epochs = 240
  c.dtype = 'float32'  # computation dtype; parameters and optimizer state stay float32
  c.bn_stats = 'global'  # or 'per_device', as torch.nn.DataParallel computes them

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.lr_decay_epochs = (150, 180, 210)
  c.optimizer.lr_decay_rate = 0.1
  # 'step' (mdistiller: x lr_decay_rate at each of lr_decay_epochs) or 'cosine' (cosine decay
  # to 0 at num_epochs); either after a linear warm-up over warmup_epochs (0: none; mdistiller
  # has none); kdjax/train/optim.py.
  c.optimizer.schedule = 'step'
  c.optimizer.warmup_epochs = 0

  # The frozen teacher of distillation methods (unused by vanilla): a kdjax workdir, a
  # teacher folder from `python -m kdjax.convert`, a RepDistiller/mdistiller .pth, or a
  # published teacher 'mdistiller:<model>' (downloaded once from zoo_url, converted, cached;
  # kdjax/teachers/zoo.py; zoo_url None: mdistiller's GitHub release).
  c.teacher = ml_collections.ConfigDict()
  c.teacher.model = 'resnet32x4'
  c.teacher.checkpoint = ml_collections.FieldReference(None, field_type=str)
  c.teacher.zoo_url = ml_collections.FieldReference(None, field_type=str)
  # A teacher trained on another dataset than config.data.name is refused (its classes mean
  # other things); True uses it anyway, deliberately.
  c.teacher.other_data = False
  # With no checkpoint, train the teacher first into <workdir>/teacher (digits presets).
  c.teacher.train_if_missing = False
  c.teacher.num_epochs = ml_collections.FieldReference(None, field_type=int)
  # K > 0: the teacher trained first records its trajectory (SKD's snapshots), see below.
  c.teacher.trajectory_stages = 0
  # The teacher-logit cache (kdjax/teachers/logit_cache.py): the teacher's logits on every crop and
  # flip of every training image, computed once into $KDJAX_CACHE/teacher_logits/<key>/ and
  # gathered by each step instead of running the teacher; for methods that read only the
  # teacher's logits (KD, DKD, SLKD, SKD). float32: the same run to rounding; 'bfloat16'
  # halves the cache (3.2 GB in float32 for CIFAR-100) but rounds the logits: not exact.
  c.teacher.cache = False
  c.teacher.cache_dtype = 'float32'
  # 'auto': on each device when the cache takes at most half of its memory, else in host
  # memory with each step's rows sent beside its batch; 'device' or 'host' to choose.
  c.teacher.cache_placement = 'auto'
  c.teacher.cache_batch = 2048  # teacher forwards per jitted call while building it
  c.teacher.cache_chunk_images = 0  # images per file of it; 0: about 64 MiB of logits each

  # K > 0: record the trained net's variables at the end of each of K equal stages of the
  # run into <workdir>/trajectory/stage_<j> (kdjax/teachers/trajectory.py; SKD's teacher snapshots).
  c.trajectory = ml_collections.ConfigDict({'stages': 0})
  # Methods also run on the same pair, teacher and data into <workdir>/<method>, printed
  # next to this run in the summary (the digits SKD preset compares with ('kd',)).
  c.baselines = ()

  # One block of hyper-parameters per method (config.kd, config.dkd, config.slkd, ...), with
  # each method module's defaults (mdistiller's CFG.<METHOD> for the baselines).
  for name, block in methods.default_configs().items():
    c[name] = block

  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.max_steps = ml_collections.FieldReference(None, field_type=int)  # stop early (tests)
  # A workdir whose run ended (results.json) but holds no checkpoint is refused, never
  # silently overwritten from step 0; restart=True starts it over.
  c.restart = False
  # Multi-process runs (kdjax/distributed.py, docs/scaling.md): 'auto' starts
  # jax.distributed under srun / mpirun / a TPU pod slice / the KDJAX_* variables;
  # 'true' insists, 'false' never starts it.
  c.distributed = 'auto'
  # Platform-specific speed settings (kdjax/platform_tuning.py): XLA:CPU's convolution
  # library ('auto' = Eigen, 'ynnpack' = this jaxlib's default), residual block outputs
  # stored rather than fused on the CPU ('auto' = 'materialize' there, 'fuse' elsewhere),
  # and extra XLA_FLAGS.
  c.platform = platform_tuning.default_config()
  # Test and diagnosis hooks; None (the default) leaves the compiled step untouched.
  c.debug = ml_collections.ConfigDict()
  # Turn the images of update k (1-based, as logs and checkpoints count) into NaN, to see
  # the run stop with the step and loss terms named and the last good checkpoint kept.
  c.debug.nan_at_step = ml_collections.FieldReference(None, field_type=int)
  # (first, last): a jax.profiler trace of updates first..last (1-based) into
  # <workdir>/profile, for TensorBoard's profile plugin (docs/performance.md); None: none.
  c.profile_steps = ml_collections.FieldReference(None, field_type=tuple)
  # A published top-1 (%) of this preset (the SLKD paper, mdistiller's tables) that
  # `python -m kdjax.report` sets the run's best-epoch top-1 against; None: no number.
  c.reference_top1 = ml_collections.FieldReference(None, field_type=float)
  # The preset variant of the method ('official', 'sequential', 'tbt_only', ...; '' for the
  # default), set by the experiment file: `python -m kdjax.report` keeps variants apart.
  c.variant = ''
  return c


def digits_preset(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The embedded-data preset every method shares: small, quick, no download.

  scikit-learn's digits (1,437 train / 360 test images), no horizontal flip (digits are not
  mirror-symmetric), 8 epochs of batch 32, lr 0.05 warmed up over the first epoch, then
  cosine-decayed. Chosen on the resnet20 teacher alone (test top-1 per epoch): mdistiller's
  step schedule (batch 64, x0.1 at epochs 5 and 7) stays at 10-75% until the decay and jumps
  there (BatchNorm's running statistics lag the fast-moving weights); under this one it
  rises 16, 49, 77, 89, 98, 99, 99.4, 99.4% (epochs 1-8).
  """
  config.data.name = 'digits'
  config.data.flip = False
  config.num_epochs = 8
  config.batch_size = 32
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = 1
  config.log_every_steps = 10
  config.checkpoint_every_steps = 100
  return config


# The standard CIFAR-100 teacher/student pairs of mdistiller's tables (and SLKD's extras):
# preset -> (teacher, student, lr). mdistiller uses lr 0.01 for ShuffleNet/MobileNetV2
# students and 0.05 otherwise.
PAIRS = {
    'res32x4_res8x4': ('resnet32x4', 'resnet8x4', 0.05),
    'res56_res20': ('resnet56', 'resnet20', 0.05),
    'res110_res32': ('resnet110', 'resnet32', 0.05),
    'res56_res8': ('resnet56', 'resnet8', 0.05),
    'wrn40_2_wrn16_2': ('wrn_40_2', 'wrn_16_2', 0.05),
    'wrn40_2_wrn40_1': ('wrn_40_2', 'wrn_40_1', 0.05),
    'vgg13_vgg8': ('vgg13', 'vgg8', 0.05),
    'vgg13_vgg11': ('vgg13', 'vgg11', 0.05),
    'res32x4_shuv1': ('resnet32x4', 'ShuffleV1', 0.01),
    'res32x4_shuv2': ('resnet32x4', 'ShuffleV2', 0.01),
    'wrn40_2_shuv1': ('wrn_40_2', 'ShuffleV1', 0.01),
    'vgg13_mv2': ('vgg13', 'MobileNetV2', 0.01),
    'res50_mv2': ('ResNet50', 'MobileNetV2', 0.01),
}

# mdistiller's ImageNet pairs (its configs/imagenet/<preset>/*.yaml): preset -> (teacher,
# student) of the imagenet zoo. The teacher is the torchvision ImageNet model mdistiller
# loads, a published teacher 'torchvision:<name>' (kdjax.teachers.zoo.TORCHVISION).
IMAGENET_PAIRS = {
    'r34_r18': ('ResNet34', 'ResNet18'),
    'r50_mv1': ('ResNet50', 'MobileNetV1'),
}


def imagenet_preset(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """mdistiller's ImageNet recipe (``configs/imagenet/r34_r18/kd.yaml`` and its siblings).

  ImageNet from ``config.data.data_dir`` (an ImageFolder ``train/``, ``val/`` or a
  TFDS-prepared ``imagenet2012``) through the host pipeline, the imagenet zoo on 224x224
  crops (evaluation: resize 256, center crop 224); batch 512, 100 epochs, SGD lr 0.2,
  momentum 0.9, weight decay 1e-4, lr x0.1 at epochs 30, 60 and 90; test batch 128; metrics
  every 50 steps (``LOG.TENSORBOARD_FREQ``). The number of classes comes from the data
  (1000 for ImageNet). BatchNorm statistics stay ``global`` (over the whole batch):
  mdistiller's ``torch.nn.DataParallel`` computes them on each GPU's share of the batch;
  ``--config.bn_stats=per_device`` does that on as many devices.
  """
  config.data.name, config.zoo = 'imagenet', 'imagenet'
  config.data.image_size, config.data.resize_size = 224, 256
  config.batch_size, config.eval_batch_size, config.num_epochs = 512, 128, 100
  config.optimizer.lr, config.optimizer.momentum = 0.2, 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.lr_decay_epochs, config.optimizer.lr_decay_rate = (30, 60, 90), 0.1
  config.log_every_steps = 50
  return config


# The digits pipeline: a small teacher trained first, then a smaller student.
DIGITS_TEACHER, DIGITS_STUDENT = 'resnet20', 'resnet8'


def distillation_config(method: str, arg: str | None, variants: tuple = (),
                        imagenet: tuple = tuple(IMAGENET_PAIRS)) -> ml_collections.ConfigDict:
  """A distillation run of ``method``: ``arg`` is the experiment file's argument, a pair
  preset of :data:`PAIRS`, of :data:`IMAGENET_PAIRS` (those in ``imagenet``: the pairs the
  method has an ImageNet recipe for; another is refused naming the missing
  ``configs/imagenet/<pair>/<method>.yaml``), or ``digits``, with any of the method's
  ``variants`` after commas (:func:`kdjax.presets.parse`; ``config.variant`` holds them
  joined by ``+``, in order).

  Without a preset: CIFAR-100 ``res32x4_res8x4``. A CIFAR preset distils from its pair's
  published teacher, ``mdistiller:<teacher>`` (downloaded, verified and converted once into
  the cache, :mod:`kdjax.teachers.zoo`), unless ``--config.teacher.checkpoint`` names
  another; an ImageNet preset (:func:`imagenet_preset`) from torchvision's,
  ``torchvision:<name>``, likewise; ``digits`` trains its teacher first into
  ``<workdir>/teacher`` and reuses it on later runs.
  """
  preset, chosen = presets.parse(arg, method, ('digits', *PAIRS, *IMAGENET_PAIRS), variants)
  preset = preset or 'res32x4_res8x4'
  c = base_config()
  c.method = method
  c.variant = '+'.join(chosen)  # report rows keep variants apart
  if preset == 'digits':
    digits_preset(c)
    c.teacher.model, c.model = DIGITS_TEACHER, DIGITS_STUDENT
    c.teacher.train_if_missing = True
  elif preset in PAIRS:
    c.teacher.model, c.model, c.optimizer.lr = PAIRS[preset]
    c.teacher.checkpoint = teacher_zoo.PREFIX + c.teacher.model
  else:
    if preset not in imagenet:
      raise KdjaxError(f'{method} has no ImageNet recipe for {preset}: mdistiller\'s '
                       f'configs/imagenet/{preset}/ holds no {method}.yaml'
                       + (f'; its ImageNet presets: {", ".join(imagenet)}' if imagenet else ''))
    imagenet_preset(c)
    c.teacher.model, c.model = IMAGENET_PAIRS[preset]
    c.teacher.checkpoint = teacher_zoo.torchvision_spec(c.teacher.model)
  c.preset = preset
  return c
