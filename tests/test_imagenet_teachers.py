"""kdjax.teachers.zoo's torchvision teachers (``torchvision:<name>``), over a local HTTP server.

The served file is a real torchvision-layout state dict: mdistiller's ImageNet ResNet18 of the
reference fixture (``imagenet_ResNet18.npz``, whose eval logits on a fixed input are in
``imagenet_ResNet18_io.npz``), saved with ``torch.save`` as torchvision publishes its weights,
and named ``resnet18-<first 8 hex digits of its sha256>.pth`` as torchvision names files.
"""

import hashlib
import io
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture
from kdjax import downloads, models, teachers
from kdjax.teachers import zoo as teacher_zoo
from kdjax.errors import KdjaxError
from fileserver import FileServer

SPEC = 'torchvision:resnet18'


@pytest.fixture(name='pth', scope='module')
def _pth() -> bytes:
  torch = pytest.importorskip('torch')
  weights = load_fixture('imagenet_ResNet18.npz')
  state = {k: torch.from_numpy(weights[k].astype(np.float32) if weights[k].dtype == np.float16
                               else weights[k]) for k in weights.files}
  buffer = io.BytesIO()
  torch.save(state, buffer)
  return buffer.getvalue()


def _register(monkeypatch, file: str) -> None:
  """Makes ``torchvision:resnet18`` a zoo teacher served as ``file``."""
  monkeypatch.setitem(teacher_zoo.TORCHVISION, 'resnet18', ('ResNet18', file, 69.758))


def test_resolve_verifies_converts_once_and_then_works_offline(pth, monkeypatch, tmp_path):
  file = f'resnet18-{hashlib.sha256(pth).hexdigest()[:8]}.pth'
  _register(monkeypatch, file)
  cache = str(tmp_path / 'cache')
  with FileServer() as server:
    server.files[file] = pth
    folder = teacher_zoo.resolve(SPEC, zoo_url=server.url(''), cache=cache, num_classes=1000)
    assert [path for path, _ in server.requests] == [file]
  assert folder == os.path.join(
      teacher_zoo.source_root('torchvision', server.url(''), cache), 'resnet18')
  # The server is gone: the converted folder is reused, no network.
  assert teacher_zoo.resolve(SPEC, zoo_url=server.url(''), cache=cache,
                             num_classes=1000) == folder
  variables = teachers.load_variables(folder, 'ResNet18', 1000, (224, 224, 3), zoo='imagenet')
  fixture = load_fixture('imagenet_ResNet18_io.npz')
  images = jnp.asarray(np.transpose(fixture['input'], (0, 2, 3, 1)))
  logits = models.create('ResNet18', 1000, zoo='imagenet').apply(variables, images, train=False)
  np.testing.assert_allclose(logits.logits, fixture['logits_eval'], atol=1e-4, rtol=0)


def test_a_file_whose_sha256_does_not_start_with_its_name_digits_is_refused(pth, monkeypatch,
                                                                          tmp_path):
  _register(monkeypatch, 'resnet18-deadbeef.pth')
  cache = str(tmp_path / 'cache')
  with FileServer() as server:
    server.files['resnet18-deadbeef.pth'] = pth
    with pytest.raises(downloads.ChecksumError, match='does not start with deadbeef') as error:
      teacher_zoo.resolve(SPEC, zoo_url=server.url(''), cache=cache, num_classes=1000)
  assert '\n' not in str(error.value)
  root = teacher_zoo.source_root('torchvision', server.url(''), cache)
  assert not os.path.exists(os.path.join(root, 'resnet18-deadbeef.pth'))  # deleted, not used
  assert not os.path.exists(os.path.join(root, 'resnet18'))


def test_a_torchvision_spec_must_name_a_known_file_of_the_teacher_architecture():
  assert teacher_zoo.published_top1('torchvision:resnet50', 'imagenet') == 76.130
  with pytest.raises(KdjaxError, match='is a ResNet34, but config.teacher.model is ResNet18'):
    teacher_zoo.check_spec('torchvision:resnet34', 'ResNet18')
  with pytest.raises(KdjaxError, match='torchvision:resnet34, torchvision:resnet50'):
    teacher_zoo.check_spec('torchvision:vgg16', 'ResNet34')
