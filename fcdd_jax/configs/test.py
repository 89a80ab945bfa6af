"""Tiny configuration for tests: a few steps on the embedded demo data.

  python -m fcdd_jax.main --config configs/test.py --workdir /tmp/fcdd_test
"""
from fcdd_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'demo'
  c.data.supervise_mode = 'malformed_normal'
  c.data.noise_mode = 'confetti'
  c.data.demo_num_train = 64
  c.data.demo_num_test = 32
  c.model.name = 'FCDD_CNN32_S'
  c.model.dtype = 'float32'       # the same numerics on every CPU (auto: bfloat16 where it has bf16 arithmetic)
  c.batch_size = 16
  c.num_train_steps = 6
  c.log_every_steps = 2
  c.checkpoint_every_steps = 3
  c.loss.gauss_std = 1.2
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  return c
