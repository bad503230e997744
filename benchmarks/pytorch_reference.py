"""PyTorch reference throughput of the CIFAR-100 train steps that kdjax benchmarks, on this
machine's CPU (a benchmark, not a test; set against ``benchmarks/throughput.py``'s rows).

    python benchmarks/pytorch_reference.py                     # every method, 2 threads
    python benchmarks/pytorch_reference.py --method vanilla,kd --steps 20 --threads 2
    python benchmarks/pytorch_reference.py --tiny --out /tmp/ptref_tiny.json   # seconds

Standalone: the standard library and torch only; kdjax's JAX code is not imported.

**The nets.** The CIFAR ResNets of RepDistiller/mdistiller, written here from their
description: a stem conv3x3(3 -> 32) + BN + ReLU, three stages of ``(depth - 2) // 6``
BasicBlocks (two conv3x3 + BN, ReLU after the residual sum; a conv1x1 of stride s + BN
shortcut where the shape changes) with 64, 128, 256 filters and strides 1, 2, 2, an 8x8
average pool and a linear layer to 100 classes; convolutions without bias, Kaiming-normal
(fan out) initialised. ``resnet8x4`` (the student, 1,233,540 parameters) has one block per
stage, ``resnet32x4`` (the teacher, 7,433,860 parameters) five.

**The step.** PyTorch's usual CPU path: float32, NCHW, ``torch.set_num_threads(--threads)``,
nets in train mode, SGD (lr 0.05, momentum 0.9, weight decay 5e-4), each step
``optimizer.zero_grad(); loss.backward(); optimizer.step()`` after the forward passes. The
inputs are synthetic (standard-normal 3x32x32 images, uniform labels of 100 classes, four
batches cycled); there is no data pipeline or augmentation (kdjax's step includes both).
Frozen teachers are randomly initialised, in eval mode, run under ``torch.no_grad()``.
KD_T(S, T) = KL(softmax(T / t) || softmax(S / t)) * t^2, batch mean, t = 4 (mdistiller's KD).

* ``vanilla``: resnet8x4, cross-entropy.
* ``vanilla_teacher`` (row ``vanilla (teacher)``, as in throughput.py): resnet32x4,
  cross-entropy.
* ``kd``: frozen resnet32x4 teacher, resnet8x4 student on 0.1 CE + 0.9 KD_4(S, T).
* ``slkd``: frozen resnet32x4 teacher T, two trainable resnet32x4 self-learning teachers
  SL1, SL2 (train mode) and the resnet8x4 student S, all in one backward and one SGD
  optimizer over S, SL1, SL2. With L(X, Y) = 0.1 CE(X) + 0.9 KD_4(X, Y) and the fused
  logits F = (SL1 + SL2) / 2 detached (kdjax's ``config.slkd`` defaults):
  loss = L(S, T) + 3 L(S, F) + L(SL1, T) + L(SL2, T).
* ``teacher_forward``: resnet32x4 forward only, eval mode, ``torch.no_grad()``.

Each method: ``--warmup`` untimed steps, then ``--steps`` timed ones; reported are the
median images/second (with min and max) and the median step time. Results go to stdout as a
Markdown table and to a JSON file (``--out``) with the machine (platform, processor, CPU
count, torch version, threads, load average before and after) and one row per method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 100
NUM_BATCHES = 4  # distinct synthetic batches, cycled
NUM_FILTERS = (32, 64, 128, 256)
STUDENT, TEACHER = 'resnet8x4', 'resnet32x4'
CE_WEIGHT, KD_WEIGHT, TEMPERATURE = 0.1, 0.9, 4.0
SLKD_ETA = 3.0  # weight of the student's terms towards the fused SL-teachers
LABELS = {'vanilla_teacher': 'vanilla (teacher)'}  # throughput.py's row names


# --------------------------------------------------------------------------- the nets


class BasicBlock(nn.Module):
  """Two conv3x3 + BN, ReLU after adding the (projected where the shape changes) input."""

  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Identity()
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                    nn.BatchNorm2d(planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
  """RepDistiller's CIFAR ResNet: stem, three stages of BasicBlocks, 8x8 pool, linear."""

  def __init__(self, depth: int, num_filters=NUM_FILTERS, num_classes: int = NUM_CLASSES):
    super().__init__()
    if (depth - 2) % 6:
      raise ValueError(f'depth must be 6n + 2, got {depth}')
    blocks = (depth - 2) // 6
    self.stem = nn.Sequential(nn.Conv2d(3, num_filters[0], 3, 1, 1, bias=False),
                              nn.BatchNorm2d(num_filters[0]), nn.ReLU())
    layers, in_planes = [], num_filters[0]
    for planes, stride in zip(num_filters[1:], (1, 2, 2)):
      for i in range(blocks):
        layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
        in_planes = planes
    self.stages = nn.Sequential(*layers)
    self.pool = nn.AvgPool2d(8)
    self.fc = nn.Linear(in_planes, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x):
    x = self.pool(self.stages(self.stem(x)))
    return self.fc(torch.flatten(x, 1))


MODELS = {'resnet8x4': lambda: CifarResNet(8), 'resnet32x4': lambda: CifarResNet(32)}


# --------------------------------------------------------------------------- the steps


def kd_loss(logits, target_logits, temperature: float = TEMPERATURE):
  """mdistiller's KD: KL(softmax(target / t) || softmax(logits / t)) * t^2, batch mean."""
  log_p = F.log_softmax(logits / temperature, dim=1)
  q = F.softmax(target_logits / temperature, dim=1)
  return F.kl_div(log_p, q, reduction='batchmean') * temperature ** 2


def ce_kd(logits, labels, target_logits):
  return (CE_WEIGHT * F.cross_entropy(logits, labels)
          + KD_WEIGHT * kd_loss(logits, target_logits))


def frozen(name: str) -> nn.Module:
  return MODELS[name]().eval().requires_grad_(False)


def no_grad_forward(net: nn.Module, images):
  with torch.no_grad():
    return net(images)


def train_step(nets, loss_fn):
  """One SGD optimizer over ``nets``' parameters; the step: forward, backward, update."""
  params = [p for net in nets for p in net.parameters()]
  optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)

  def step(images, labels):
    loss = loss_fn(images, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
  return step


def vanilla_step(name: str):
  net = MODELS[name]().train()
  return train_step([net], lambda x, y: F.cross_entropy(net(x), y))


def kd_step():
  teacher, student = frozen(TEACHER), MODELS[STUDENT]().train()
  return train_step([student], lambda x, y: ce_kd(student(x), y, no_grad_forward(teacher, x)))


def slkd_step():
  teacher, student = frozen(TEACHER), MODELS[STUDENT]().train()
  sl_teachers = [MODELS[TEACHER]().train() for _ in range(2)]

  def loss(x, y):
    t = no_grad_forward(teacher, x)
    sl_logits = [net(x) for net in sl_teachers]
    fused = (0.5 * sl_logits[0] + 0.5 * sl_logits[1]).detach()
    s = student(x)
    return (ce_kd(s, y, t) + SLKD_ETA * ce_kd(s, y, fused)
            + sum(ce_kd(logits, y, t) for logits in sl_logits))
  return train_step([student, *sl_teachers], loss)


def teacher_forward_step():
  teacher = frozen(TEACHER)
  return lambda x, y: no_grad_forward(teacher, x)


# method -> (the net it trains or runs, its teacher, the step's builder)
METHODS = {
    'vanilla': (STUDENT, None, lambda: vanilla_step(STUDENT)),
    'vanilla_teacher': (TEACHER, None, lambda: vanilla_step(TEACHER)),
    'kd': (STUDENT, TEACHER, kd_step),
    'slkd': (STUDENT, TEACHER, slkd_step),
    'teacher_forward': (TEACHER, None, teacher_forward_step),
}


def bench_method(name: str, batch: int, steps: int, warmup: int) -> dict:
  """Times ``name``'s step on synthetic batches; returns one result row."""
  net, teacher, build = METHODS[name]
  torch.manual_seed(0)
  step = build()
  images = torch.randn(NUM_BATCHES, batch, 3, 32, 32)
  labels = torch.randint(0, NUM_CLASSES, (NUM_BATCHES, batch))
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    step(images[i % NUM_BATCHES], labels[i % NUM_BATCHES])
    if i >= warmup:
      times.append(time.perf_counter() - t)
  med = statistics.median(times)
  return {'method': LABELS.get(name, name), 'net': net, 'teacher': teacher, 'batch': batch,
          'dtype': 'float32', 'images_per_s': batch / med,
          'images_per_s_min': batch / max(times), 'images_per_s_max': batch / min(times),
          'step_ms_median': 1000 * med, 'timed_steps': len(times)}


# --------------------------------------------------------------------------- output


def _load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:  # pragma: no cover - no load average on this OS
    return []


COLUMNS = [('method', 'method', '{}'), ('net', 'net', '{}'), ('batch', 'batch', '{}'),
           ('images_per_s', 'img/s', '{:.1f}'), ('images_per_s_min', 'min', '{:.1f}'),
           ('images_per_s_max', 'max', '{:.1f}'), ('step_ms_median', 'step ms', '{:.1f}')]


def format_table(rows: list[dict]) -> str:
  lines = ['| ' + ' | '.join(h for _, h, _ in COLUMNS) + ' |',
           '|' + '|'.join('---' for _ in COLUMNS) + '|']
  for r in rows:
    lines.append('| ' + ' | '.join(f.format(r[k]) for k, _, f in COLUMNS) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--method', default='all',
                      help=f"names joined by ',' ({', '.join(METHODS)}) or 'all'")
  parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=10, help='timed steps per method')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--tiny', action='store_true',
                      help='seconds, a smoke check: batch 8, 1 warm-up, 2 timed steps')
  parser.add_argument('--out', default='benchmarks/results/pytorch_reference.json')
  args = parser.parse_args(argv)
  if args.tiny:
    args.batch, args.warmup, args.steps = 8, 1, 2
  names = list(METHODS) if args.method == 'all' else args.method.split(',')
  unknown = [n for n in names if n not in METHODS]
  if unknown:
    parser.error(f'unknown methods {unknown}; known: {", ".join(METHODS)}')
  torch.set_num_threads(args.threads)
  load_before = _load_average()
  t_start = time.perf_counter()
  rows = []
  for name in names:
    rows.append(bench_method(name, args.batch, args.steps, args.warmup))
    print(f'{rows[-1]["method"]}: {rows[-1]["images_per_s"]:.1f} img/s', file=sys.stderr,
          flush=True)
  machine = {'platform': platform.platform(), 'processor': platform.processor(),
             'cpu_count': os.cpu_count(), 'torch': torch.__version__,
             'threads': torch.get_num_threads(),
             'mkldnn': torch.backends.mkldnn.is_available(),
             'load_average_before': load_before, 'load_average_after': _load_average(),
             'wall_s': time.perf_counter() - t_start}
  print(f'torch {machine["torch"]}, {machine["threads"]} threads; load average before '
        f'{load_before}, after {machine["load_average_after"]}')
  print(format_table(rows))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'machine': machine, 'args': vars(args), 'results': rows}, f, indent=2)
  print(f'wrote {args.out}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
