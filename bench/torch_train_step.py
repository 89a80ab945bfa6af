"""Median images/s of one PyTorch CPU FCDD train step (forward, loss, backward, SGD-Nesterov + coupled
weight decay, BN statistics), NCHW and channels_last.

  python -m bench.torch_train_step [--net NAME] [--batch B] [--steps S] [--threads T] [--keep_freed_memory]
"""
import argparse

from bench import common


def build(net_name, batch, layout, threads=None, autocast_bf16=False):
  """Returns run(): one PyTorch train step (eager, float32) in `layout` ('nchw' | 'channels_last');
  `autocast_bf16`: the forward pass under torch.autocast('cpu', bfloat16) (PyTorch's mixed precision)."""
  import torch  # pylint: disable=g-import-not-at-top
  from bench import torch_nets  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  make, shape = torch_nets.NETS[net_name]
  net = make().train()
  x = torch.randn(batch, *shape)
  y = (torch.arange(batch) % 2).long()
  if layout == 'channels_last':
    net = net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3, momentum=0.9, nesterov=True,
                        weight_decay=1e-6)
  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast_bf16):
      out = net(x)
    loss = torch_nets.fcdd_loss(out.float(), y)
    loss.backward()
    opt.step()
  return step


def measure(net_name, batch, steps, layout, threads=None):
  import torch  # pylint: disable=g-import-not-at-top
  step = build(net_name, batch, layout, threads)
  t = common.median_time(step, steps, warmup=2)
  return common.emit(impl='torch', net=net_name, batch=batch, layout=layout, img_per_s=round(batch / t, 2),
                     seconds=round(t, 4), threads=torch.get_num_threads(), device_kind=common.cpu_kind(),
                     torch=torch.__version__, load=common.load_avg())


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--net', default=None)
  p.add_argument('--batch', type=int, default=None)
  p.add_argument('--steps', type=int, default=None)
  p.add_argument('--threads', type=int, default=None)
  p.add_argument('--layout', default='both', choices=['both', 'nchw', 'channels_last'])
  p.add_argument('--keep_freed_memory', action='store_true',
                 help='glibc mallopt: keep freed memory mapped (fcdd_jax.utils.memory.keep_freed_memory)')
  a = p.parse_args()
  if a.keep_freed_memory:
    from fcdd_jax.utils import memory  # pylint: disable=g-import-not-at-top
    memory.keep_freed_memory()
  nets = [a.net] if a.net else list(common.NETS)
  for n in nets:
    b = a.batch or common.NETS[n]
    steps = a.steps or (5 if '224' in n else 10)
    for layout in (['nchw', 'channels_last'] if a.layout == 'both' else [a.layout]):
      measure(n, b, steps, layout, a.threads)


if __name__ == '__main__':
  main()
