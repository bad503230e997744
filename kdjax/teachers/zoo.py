"""Published teachers, downloaded and converted on demand: mdistiller's CIFAR-100 teachers
and the torchvision ImageNet models mdistiller's ImageNet recipes distil from.

A teacher spec ``mdistiller:<name>`` (for ``config.teacher.checkpoint``) names one of the
teachers in mdistiller's ``cifar_teachers.tar``, the GitHub release asset :data:`ZOO_URL`:
the vanilla-trained teachers of RepDistiller (the CRD paper), which mdistiller's
``mdistiller/models/cifar/__init__.py`` reads from
``cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth``, a torch dict whose ``'model'`` is the
state dict. :data:`PUBLISHED_TOP1` is their CIFAR-100 top-1 (%) as published.

:func:`resolve` turns a spec into a kdjax teacher folder (:func:`kdjax.teachers.save`):

1. The tar is downloaded once into ``<root>/cifar_teachers.tar``, ``<root>`` being
   :func:`source_root`, ``<cache>/teachers/mdistiller/<source>`` with ``<source>`` keyed by
   the URL (:func:`kdjax.downloads.source_key`): another ``zoo_url`` is another download and
   another teacher. mdistiller publishes no checksum, so the first whole download (a tar that
   reads to its end-of-archive blocks: a cut without Content-Length is caught) is trusted and
   its URL, size and SHA-256 are recorded in ``cifar_teachers.tar.json`` next to it; a later
   download that differs is refused; a kept file that differs from the record, or a recorded
   one that is not a whole tar, is downloaded again.
2. Only the teacher's member is read from the tar, and only if it is a regular file; its
   name is never used as a path, so a crafted member cannot write outside the cache. It is
   converted by :mod:`kdjax.convert` (``torch.load(weights_only=True)``: no code runs) and
   saved in a temporary folder, renamed to ``<root>/<name>`` only when complete: a killed
   run leaves no half teacher. Its ``teacher.json`` names the source and the dataset.
3. Later calls return that folder, with no network and no tar.

``<cache>`` is :func:`kdjax.downloads.cache_dir`: the ``cache`` argument, else
``$KDJAX_CACHE``, else ``~/.cache/kdjax``. It may be a ``gs://`` URL: the download is then
verified locally before its upload (:func:`kdjax.downloads.fetch`), the teacher converted in
a local temporary folder and saved straight into the bucket, where its ``teacher.json``,
written last, marks it complete.

A spec ``torchvision:<name>`` (``resnet34``, ``resnet50``: :data:`TORCHVISION`) names the
torchvision ImageNet weights that mdistiller's ``mdistiller/models/imagenet/resnet.py``
loads (its ``model_urls``), a plain state dict at ``TORCHVISION_URL + <file>``. The 8 hex
digits in the file's name are the start of its SHA-256 (torchvision's convention,
``torch.hub`` ``check_hash``): the file is downloaded once into
``<cache>/teachers/torchvision/<source>/<file>`` (:func:`kdjax.downloads.fetch`), refused
unless its SHA-256 starts with them, converted for the imagenet zoo's model and saved, as
above, to ``<cache>/teachers/torchvision/<source>/<name>``. ``config.teacher.zoo_url`` may
name a mirror folder (``http(s)://``, ``file://`` or a local path) that holds the same file
names.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tarfile
import tempfile

from kdjax import downloads, interrupts, jsonio, paths
from kdjax.teachers import loading as teachers
from kdjax.teachers import torch_import as convert
from kdjax.errors import KdjaxError

PREFIX = 'mdistiller:'
ZOO_URL = ('https://github.com/megvii-research/mdistiller/releases/download/checkpoints/'
           'cifar_teachers.tar')
ARCHIVE = 'cifar_teachers.tar'

# CIFAR-100 top-1 (%) of the teachers in cifar_teachers.tar, as published: CRD (Tian et al.,
# ICLR 2020) Tables 1 and 2; the SLKD paper's Table 2 lists the same.
PUBLISHED_TOP1 = {'resnet32x4': 79.42, 'wrn_40_2': 75.61, 'resnet56': 72.34, 'resnet110': 74.31,
                  'vgg13': 74.64, 'ResNet50': 79.34}
TEACHERS = tuple(PUBLISHED_TOP1)


TORCHVISION_PREFIX = 'torchvision:'
TORCHVISION_URL = 'https://download.pytorch.org/models/'
# name -> (the imagenet zoo's model, the file mdistiller loads, its ImageNet top-1 (%) as
# torchvision documents it for these weights, IMAGENET1K_V1).
TORCHVISION = {
    'resnet34': ('ResNet34', 'resnet34-333f7ec4.pth', 73.314),
    'resnet50': ('ResNet50', 'resnet50-19c8e357.pth', 76.130),
}


def is_zoo_spec(spec: object) -> bool:
  """Whether ``spec`` (a ``config.teacher.checkpoint``) names a zoo teacher, ``mdistiller:*``
  or ``torchvision:*``."""
  return isinstance(spec, str) and spec.startswith((PREFIX, TORCHVISION_PREFIX))


def torchvision_spec(model: str) -> str:
  """The ``torchvision:<name>`` spec of the imagenet zoo's ``model`` (e.g. ``ResNet34``)."""
  names = [name for name, (zoo_model, _, _) in TORCHVISION.items() if zoo_model == model]
  if not names:
    raise KdjaxError(f'no published torchvision teacher for {model}; expected one of: '
                     f'{", ".join(m for m, _, _ in TORCHVISION.values())}')
  return TORCHVISION_PREFIX + names[0]


def published_top1(spec: object, dataset: str) -> float | None:
  """The published top-1 of zoo teacher ``spec`` on ``dataset``, else None."""
  if isinstance(spec, str) and spec.startswith(TORCHVISION_PREFIX):
    entry = TORCHVISION.get(spec.removeprefix(TORCHVISION_PREFIX))
    return entry[2] if entry and dataset == 'imagenet' else None
  if not is_zoo_spec(spec) or dataset != 'cifar100':
    return None
  return PUBLISHED_TOP1.get(spec.removeprefix(PREFIX))


# A published teacher measured this many points below its published top-1 is suspect.
SHORTFALL_POINTS = 5.0


def shortfall_warning(spec: object, dataset: str, measured_top1: float) -> str | None:
  """A warning line when zoo teacher ``spec`` measures more than :data:`SHORTFALL_POINTS`
  below its published top-1 on ``dataset``, naming the likely causes; else None."""
  published = published_top1(spec, dataset)
  if published is None or measured_top1 >= published - SHORTFALL_POINTS:
    return None
  return (f'warning: teacher {spec} measures {measured_top1:.2f}% top-1, '
          f'{published - measured_top1:.1f} points below its published {published:.2f}%: '
          f'check that the data is the right dataset and split with the normalisation the '
          f'teacher was trained with (config.data), and that the checkpoint converted '
          f'correctly (a changed or damaged file, the wrong model name); a student distilled '
          f'from it will be worse')


def member(name: str) -> str:
  """The path of teacher ``name``'s checkpoint inside ``cifar_teachers.tar``."""
  return f'cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth'


def _teacher_name(spec: str) -> str:
  """The zoo name of ``spec``: an mdistiller teacher, or a key of :data:`TORCHVISION`."""
  if isinstance(spec, str) and spec.startswith(TORCHVISION_PREFIX):
    name = spec.removeprefix(TORCHVISION_PREFIX)
    if name in TORCHVISION:
      return name
  else:
    name = spec.removeprefix(PREFIX) if is_zoo_spec(spec) else None
    if name in TEACHERS:
      return name
  known = [PREFIX + t for t in TEACHERS] + [TORCHVISION_PREFIX + t for t in TORCHVISION]
  raise KdjaxError(f'unknown published teacher {spec!r}; expected one of: {", ".join(known)}')


def _model(spec: str) -> str:
  """The kdjax model of zoo teacher ``spec``."""
  name = _teacher_name(spec)
  return TORCHVISION[name][0] if spec.startswith(TORCHVISION_PREFIX) else name


def check_spec(spec: str, model: str) -> None:
  """Raises :class:`KdjaxError` unless ``spec`` names a zoo teacher of architecture ``model``
  (``config.teacher.checkpoint`` and ``config.teacher.model``), before anything runs."""
  name = _model(spec)
  if name != model:
    raise KdjaxError(f'config.teacher.checkpoint {spec} is a {name}, but config.teacher.model '
                     f'is {model}')


def source_root(kind: str, url: str, cache: str | None = None) -> str:
  """``<cache>/teachers/<kind>/<source>``: the folder of what comes from ``url`` (the tar, or
  torchvision's folder), keyed by it (:func:`kdjax.downloads.source_key`)."""
  return os.fspath(paths.path(downloads.cache_dir(cache)) / 'teachers' / kind
                   / downloads.source_key(url))


def _pin(pin_path: str) -> dict | None:
  """The record of the tar's first whole download, or None (none, or not a record: asked
  for again)."""
  pin = jsonio.read_json(pin_path)
  return pin if isinstance(pin, dict) and {'size', 'sha256'} <= set(pin) else None


def _tar_problem(path: str) -> str | None:
  """Why the file at ``path`` is not a whole tar, or None: every header and member is there,
  then the two zero blocks that end an archive (a download cut short has not got them)."""
  try:
    with paths.path(path).open('rb') as f:
      with tarfile.open(fileobj=f, mode='r:') as tar:
        tar.getmembers()  # reads every header; a member cut short raises
        end = tar.offset
      f.seek(end)
      marker = f.read(2 * tarfile.BLOCKSIZE)
  except tarfile.ReadError as e:
    if not any(cut in str(e) for cut in ('unexpected end', 'truncated')):
      return f'is not a tar ({e})'
    marker = b''
  if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b'\0'):
    return (f'is not a whole tar: its {downloads.stamp(path)[0]:,} bytes stop before the end '
            f'of the archive (a download cut short)')
  return None


def _fetch_archive(url: str, path: str) -> str:
  """Downloads the tar once and returns its SHA-256. It is recorded (pinned) only when it is a
  whole tar; later downloads must match the record. A kept file that is not the recorded one,
  or a recorded one that is no whole tar, is deleted and asked for again, once."""
  pin_path = path + '.json'
  for _ in range(2):
    pin, fresh = _pin(pin_path), not paths.path(path).exists()
    try:
      downloads.fetch(url, path, sha256=pin and pin['sha256'], size=pin and pin['size'],
                      what=ARCHIVE)
    except downloads.ChecksumError as e:
      if fresh:
        raise downloads.ChecksumError(f'{e} (the expected file is the first one downloaded '
                                      f'from this URL, recorded in {pin_path}; delete that '
                                      f'to accept another)') from e
      downloads.remove(path)  # the kept file changed: asked for again
      continue
    problem = _tar_problem(path)
    if problem is None:
      digest = downloads.file_sha256(path)
      if not pin:
        jsonio.write_json(pin_path, {'url': url, 'size': downloads.stamp(path)[0],
                                     'sha256': digest})
      return digest
    downloads.remove(path, pin_path)
    if fresh:
      raise KdjaxError(f'{ARCHIVE} downloaded from {url} {problem}; it was deleted, not '
                       f'recorded: run again to download it anew, or check '
                       f'config.teacher.zoo_url')
  raise AssertionError('unreachable: the second pass downloads afresh')


def _extract(archive: str, name: str, dest: str, url: str) -> None:
  """Copies the regular-file member ``name`` of the tar ``archive`` (from ``url``) to
  ``dest``."""
  with paths.path(archive).open('rb') as f, tarfile.open(fileobj=f, mode='r:') as tar:
    found = next((m for m in tar if m.name.removeprefix('./') == name), None)
    if found is None or not found.isfile():
      raise KdjaxError(f'{ARCHIVE} from {url} has no file {name}: is config.teacher.zoo_url '
                       f'mdistiller\'s {ARCHIVE} ({ZOO_URL})? Point it at one that holds the '
                       f'teacher (this one stays in {paths.path(archive).parent}, or delete '
                       f'that folder)')
    with tar.extractfile(found) as src, open(dest, 'wb') as out:  # dest: a local work file
      shutil.copyfileobj(src, out)


def _fetch_torchvision(name: str, base_url: str, root: str) -> tuple[str, str, str]:
  """``(path, url, sha256)`` of torchvision's file of ``name``, downloaded once into
  ``root`` and refused unless its SHA-256 starts with the digits in its name."""
  file = TORCHVISION[name][1]
  url = base_url.rstrip('/') + '/' + file
  path = downloads.fetch(url, os.fspath(paths.path(root) / file), sha256=None, what=file)
  digest, prefix = downloads.file_sha256(path), file.rsplit('-', 1)[1].split('.')[0]
  if not digest.startswith(prefix):
    downloads.remove(path)
    raise downloads.ChecksumError(f'{file} from {url} has sha256 {digest}, which does not '
                                  f'start with {prefix} as its name says; it was deleted, '
                                  f'not used: check config.teacher.zoo_url')
  return path, url, digest


def resolve(spec: str, *, zoo_url: str | None = None, cache: str | None = None,
            num_classes: int = 100) -> str:
  """The kdjax teacher folder of ``spec`` (``mdistiller:<name>`` or ``torchvision:<name>``),
  made on the first call from ``zoo_url``, found by it later (another URL: another folder).

  ``zoo_url``: where ``cifar_teachers.tar`` comes from (None: :data:`ZOO_URL`; a
  ``file://`` URL or a local path for a mirror), or for a torchvision teacher the folder of
  its file (None: :data:`TORCHVISION_URL`). ``cache``: the cache folder (see the module
  docstring). ``num_classes``: the classes the teacher must have (the mdistiller zoo's have
  100, torchvision's 1000).
  """
  name = _teacher_name(spec)
  torchvision = spec.startswith(TORCHVISION_PREFIX)
  url = zoo_url or (TORCHVISION_URL if torchvision else ZOO_URL)
  root = source_root('torchvision' if torchvision else 'mdistiller', url, cache)
  folder = os.fspath(paths.path(root) / name)
  if (paths.path(folder) / teachers.TEACHER_JSON).is_file():
    return folder
  if importlib.util.find_spec('torch') is None:
    raise KdjaxError(f"{spec} is a PyTorch checkpoint; converting it needs PyTorch: pip "
                     f"install 'kdjax[torch]'")
  remote = paths.is_remote(root)
  paths.path(root).mkdir(parents=True, exist_ok=True)
  # Locally the teacher is saved beside its folder and renamed into it; a bucket has no
  # rename of a folder, and takes it in place (teacher.json, written last, completes it).
  work = tempfile.mkdtemp(dir=None if remote else root, prefix=f'.{name}.')
  try:
    staged = folder if remote else os.path.join(work, name)
    _convert(spec, url, root, work, staged, num_classes)
    if not remote:
      _move_into_place(staged, folder)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return folder


def _convert(spec: str, url: str, root: str, work: str, dest: str, num_classes: int) -> None:
  """Downloads zoo teacher ``spec`` from ``url`` into ``root`` (the ``.pth`` extracted into the
  local folder ``work``) and saves it converted as the teacher folder ``dest``."""
  name = _teacher_name(spec)
  torchvision = spec.startswith(TORCHVISION_PREFIX)
  if torchvision:
    model, dataset = TORCHVISION[name][0], 'imagenet'
    pth, url, digest = _fetch_torchvision(name, url, root)
    source = f'{url} (sha256 {digest})'
  else:
    model, dataset = name, 'cifar100'
    archive = os.fspath(paths.path(root) / ARCHIVE)
    digest = _fetch_archive(url, archive)
    pth = os.path.join(work, 'ckpt_epoch_240.pth')
    _extract(archive, member(name), pth, url)
    source = f'{member(name)} of {url} (sha256 {digest})'
  with interrupts.doing(f'converting {spec}', 'its download is kept; no half-converted '
                        'teacher is left'):
    variables = convert.variables_from_torch(model, convert.load_pth(pth), num_classes,
                                             zoo='imagenet' if torchvision else 'cifar')
    teachers.save(dest, model, num_classes, variables, source=source, dataset=dataset)


def _move_into_place(staged: str, folder: str) -> None:
  """Renames the local teacher folder ``staged`` to ``folder``, unless another process was
  first (its complete teacher is kept)."""
  try:
    paths.path(staged).rename(folder)
  except OSError as e:  # another process was first, or something else is in the way
    if not (paths.path(folder) / teachers.TEACHER_JSON).is_file():
      raise KdjaxError(f'could not create the teacher folder {folder} ({e.strerror or e}); '
                       f'delete what is there') from e
