"""Starting weights without ImageNet: the VGG11-BN layers of the FCDD VGG nets pretrained as a CIFAR-10 classifier.

The net is the FCDD VGG nets' feature stack (torchvision vgg11_bn features 0..20: six convs with BatchNorm,
stride 8) + global average pooling + a linear classifier over the labelled classes, trained with
SGD-Nesterov (momentum 0.9, weight decay 5e-4, linear warm-up then cosine decay) on random 32x32 crops (4 px
reflect padding) with horizontal flips. `torchvision_weights` writes the six convs in torchvision's key layout,
the format `models.pretrained.apply_pretrained` reads (`--config.model.pretrained_path`).

Why (bench/README.md, "Panel", session 13): from scratch, the authors' recipe barely moves the weights in a
short budget (a random-feature detector). Features learnt on CIFAR-10 (~24 minutes on 2 CPU cores), used by
FCDD_CNN224_VGG_F with the authors' recipe and the mean image score, detect objects far better (MVTec bottle
image AUC 0.930 vs 0.793 for configs/custom.py from scratch) and fabric worse (AITEX 0.522 vs 0.706): an option.
"""
import dataclasses
import json
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fcdd_jax.configs import default as default_config
from fcdd_jax.data import constants
from fcdd_jax.data import one_vs_rest
from fcdd_jax.data import transforms
from fcdd_jax.models import feature_stack
from fcdd_jax.utils import progress

LAYERS = feature_stack.VGG11_FEATURES[:9]        # the FCDD VGG nets' feature stack (models.nets.FCDD_ARCHS)
CONVS = tuple(l[7] for l in LAYERS if l[0] == 'conv')   # torchvision indices 0, 4, 8, 11, 15, 18
SIZE = 32


class Classifier(nn.Module):
  """The FCDD VGG feature stack + global average pooling + a linear layer."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    x = feature_stack.FeatureStack(LAYERS, vgg=True, dtype=self.dtype, fused=feature_stack.use_fused_blocks(None),
                                   name='features')(x, train)
    return nn.Dense(self.num_classes, name='head')(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))


@dataclasses.dataclass(frozen=True)
class Settings:
  epochs: int = 10
  batch: int = 128
  lr: float = 0.05
  weight_decay: float = 5e-4
  seed: int = 0
  dtype: str = 'bfloat16'


def augment(images, rng):
  """Random 32x32 crops of the 4 px reflect-padded images, each flipped left-right with probability 1/2."""
  n = len(images)
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode='reflect')
  oy, ox = rng.integers(0, 9, (2, n))
  rows = oy[:, None] + np.arange(SIZE)[None]
  cols = ox[:, None] + np.arange(SIZE)[None]
  flip = rng.random(n) < 0.5
  cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def make_steps(net, tx, mean, std):
  """(train_step(params, stats, opt, images, labels) -> (params, stats, opt, loss, accuracy),
  predict(params, stats, images) -> labels), both jitted; images uint8 [N,32,32,3]."""
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

  def norm(x):
    return (x.astype(jnp.float32) / 255 - mean) / std

  def train_step(params, stats, opt, images, labels):
    def loss_fn(p):
      logits, upd = net.apply({'params': p, 'batch_stats': stats}, norm(images), True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (upd['batch_stats'], jnp.mean(jnp.argmax(logits, -1) == labels))
    (loss, (stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), stats, opt, loss, acc

  def predict(params, stats, images):
    return jnp.argmax(net.apply({'params': params, 'batch_stats': stats}, norm(images), False), -1)

  return jax.jit(train_step), jax.jit(predict)


def torchvision_weights(params, stats):
  """{torchvision vgg11_bn key: float32 array} of the six convs (OIHW) and their BatchNorms."""
  f, s = params['features'], stats['features']
  out = {}
  for c in CONVS:
    out[f'features.{c}.weight'] = np.transpose(np.asarray(f[f'features_{c}']['kernel'], np.float32), (3, 2, 0, 1))
    out[f'features.{c}.bias'] = np.asarray(f[f'features_{c}']['bias'], np.float32)
    out[f'features.{c + 1}.weight'] = np.asarray(f[f'features_{c + 1}']['scale'], np.float32)
    out[f'features.{c + 1}.bias'] = np.asarray(f[f'features_{c + 1}']['bias'], np.float32)
    out[f'features.{c + 1}.running_mean'] = np.asarray(s[f'features_{c + 1}']['mean'], np.float32)
    out[f'features.{c + 1}.running_var'] = np.asarray(s[f'features_{c + 1}']['var'], np.float32)
  return out


def accuracy(predict, params, stats, images, labels, batch=500):
  correct = 0
  for i in range(0, len(images), batch):
    correct += int(np.sum(np.asarray(predict(params, stats, images[i:i + batch])) == labels[i:i + batch]))
  return correct / len(images)


def print_json(record):
  print(json.dumps(record), flush=True)


def train(train_set, test_set, num_classes, settings=Settings(), log: Callable[[dict], None] = print_json):
  """Trains the classifier on (images uint8 [N,32,32,3], labels [N]) and returns `torchvision_weights`.
  `log` gets one dict per epoch (loss, training and test accuracy, seconds)."""
  (x, y), (xt, yt) = train_set, test_set
  if len(x) < settings.batch:
    raise ValueError(f'{len(x)} training images: fewer than one batch of {settings.batch}')
  net = Classifier(num_classes, jnp.dtype(settings.dtype))
  variables = net.init(jax.random.PRNGKey(settings.seed), jnp.zeros((2, SIZE, SIZE, 3)), False)
  params, stats = variables['params'], variables['batch_stats']
  steps_per_epoch = len(x) // settings.batch
  total = settings.epochs * steps_per_epoch
  schedule = optax.warmup_cosine_decay_schedule(0.0, settings.lr, max(1, min(500, total // 10)), total)
  tx = optax.chain(optax.add_decayed_weights(settings.weight_decay),
                   optax.sgd(schedule, momentum=0.9, nesterov=True))
  opt = tx.init(params)
  train_step, predict = make_steps(net, tx, *transforms.channel_stats(x))
  rng = np.random.default_rng(settings.seed)
  start = time.monotonic()
  bar = progress.Progress('pretraining', total, 'steps')
  for epoch in range(settings.epochs):
    order = rng.permutation(len(x))
    losses, accs = [], []
    for i in range(steps_per_epoch):
      idx = order[i * settings.batch:(i + 1) * settings.batch]
      params, stats, opt, loss, acc = train_step(params, stats, opt, augment(x[idx], rng), y[idx])
      losses.append(loss)
      accs.append(acc)
      bar.update()
    log({'epoch': epoch + 1, 'loss': round(float(np.mean(jax.device_get(losses))), 4),
         'train_accuracy': round(float(np.mean(jax.device_get(accs))), 4),
         'test_accuracy': round(accuracy(predict, params, stats, xt, yt), 4),
         'img_per_s': round((epoch + 1) * steps_per_epoch * settings.batch / (time.monotonic() - start), 1),
         'seconds': round(time.monotonic() - start)})
  bar.close()
  return torchvision_weights(params, stats)


def run(out, data_root='', settings=Settings(), overwrite=False, log=print_json):
  """Loads CIFAR-10 (`data.one_vs_rest.cifar10_arrays`: folders in `data_root`, else tfds), trains, and writes
  `out` (.npz) whole or not at all. Raises ValueError/FileNotFoundError with a one-line message."""
  if not out.endswith('.npz'):
    raise ValueError(f'--out={out!r}: expected a .npz file name')
  if os.path.exists(out) and not overwrite:
    raise ValueError(f'--out={out!r} exists (pass --overwrite to replace it)')
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise FileNotFoundError(f'--out={out!r}: folder {parent} does not exist')
  config = default_config.get_config()
  config.data.root = data_root
  arrays = one_vs_rest.cifar10_arrays(config)
  progress.say(f'CIFAR-10: {len(arrays["train"][0])} training, {len(arrays["test"][0])} test images; '
               f'{settings.epochs} epochs of batch {settings.batch} in {settings.dtype}')
  weights = train(arrays['train'], arrays['test'], len(constants.CIFAR10_CLASSES), settings, log)
  tmp = os.path.join(parent, f'.{os.path.basename(out)}.{os.getpid()}.tmp.npz')
  try:
    np.savez(tmp, **weights)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return weights
