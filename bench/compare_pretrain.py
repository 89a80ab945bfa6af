"""`fcdd_jax.pretrain`'s compiled CIFAR-10 classifier step vs the same classifier in PyTorch CPU eager, in ONE
process with the implementations alternating step by step (a varying machine load hits all alike).

The net: torchvision vgg11_bn features 0..20 (the FCDD VGG nets' six convs with BatchNorm, three max-pools)
+ global average pooling + Linear(512, 10), cross-entropy, SGD-Nesterov with weight decay, 32x32 inputs.
fcdd_jax: `pipeline.pretrain.make_steps` as the command runs it (uint8 in, normalised in the step), float32
and the command's dtype (`run.compute_dtype`: bfloat16 on a CPU with bf16 arithmetic). PyTorch: float32 NCHW, float32
channels_last, autocast-bf16 channels_last. One JSON line per implementation (median img/s), then a line
`impl: ratio`: the command's default vs PyTorch's fastest (`default_vs_torch_fastest`). Results: bench/README.md.

  python -m bench.compare_pretrain [--batch 128] [--steps 10] [--threads T]
"""
import argparse
import statistics
import time

import numpy as np

from bench import common


def jax_step(batch, dtype):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import pretrain  # pylint: disable=g-import-not-at-top
  net = pretrain.Classifier(10, jnp.dtype(dtype))
  v = net.init(jax.random.PRNGKey(0), jnp.zeros((2, pretrain.SIZE, pretrain.SIZE, 3)), False)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9, nesterov=True))
  step, _ = pretrain.make_steps(net, tx, np.full(3, 0.5), np.full(3, 0.25))
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (batch, pretrain.SIZE, pretrain.SIZE, 3)).astype(np.uint8)
  y = rng.integers(0, 10, batch).astype(np.int32)
  state = [v['params'], v['batch_stats'], tx.init(v['params'])]

  def run():
    p, s, o, loss, _ = step(*state, x, y)
    jax.block_until_ready(loss)
    state[:] = [p, s, o]
  return run


def torch_step(batch, layout, autocast_bf16, threads=None):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  from bench import torch_nets  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  features = torch_nets.fcdd_cnn224_vgg_nopt()[0]   # the same vgg11_bn features 0..20, every layer trained
  net = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)).train()
  x = torch.randn(batch, 3, 32, 32)
  y = torch.randint(0, 10, (batch,))
  if layout == 'channels_last':
    net = net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

  def run():
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast_bf16):
      out = net(x)
    loss = nn.functional.cross_entropy(out.float(), y)
    loss.backward()
    opt.step()
  return run


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--threads', type=int, default=None)
  a = p.parse_args()
  from fcdd_jax.configs import default  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import run as run_lib  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model.name, c.model.dtype = 'FCDD_CNN224_VGG_F', 'auto'
  own = str(run_lib.compute_dtype(c))   # what `python -m fcdd_jax.pretrain` trains in
  impls = {f'jax_{d}': jax_step(a.batch, d) for d in dict.fromkeys(['float32', own])}
  impls.update({'torch_nchw_float32': torch_step(a.batch, 'nchw', False, a.threads),
                'torch_channels_last_float32': torch_step(a.batch, 'channels_last', False, a.threads),
                'torch_channels_last_autocast-bf16': torch_step(a.batch, 'channels_last', True, a.threads)})
  for fn in impls.values():   # compile / warm up
    fn()
    fn()
  times = {k: [] for k in impls}
  for _ in range(a.steps):
    for k, fn in impls.items():
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
  rates = {k: a.batch / statistics.median(v) for k, v in times.items()}
  for k, r in rates.items():
    common.emit(impl=k, batch=a.batch, img_per_s=round(r, 3), device_kind=common.cpu_kind(), load=common.load_avg())
  torch_best = max((k for k in rates if k.startswith('torch')), key=rates.get)
  common.emit(impl='ratio', device_kind=common.cpu_kind(), default=f'jax_{own}', torch_fastest=torch_best,
              default_vs_torch_fastest=round(rates[f'jax_{own}'] / rates[torch_best], 3))


if __name__ == '__main__':
  main()
