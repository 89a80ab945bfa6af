"""Built-in demo: FCDD on embedded procedural textures with defects (no download).

  python -m fcdd_jax.main                      # same as --config configs/demo.py
  python -m fcdd_jax.main --config configs/demo.py --workdir runs/demo

Trains FCDD_CNN32_S on nominal 32x32 textures with confetti-style synthetic anomalies
(malformed_normal), then scores test textures with spots, scratches, stains and holes. Expected: image
AUC and pixel AUC >= 0.9 in a few minutes on 2 CPU cores.
"""
from fcdd_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'demo'
  c.data.supervise_mode = 'malformed_normal'
  c.data.noise_mode = 'confetti'
  c.data.preproc = 'aug1'
  c.data.demo_num_train = 1024
  c.data.demo_num_test = 256
  c.data.demo_image_size = 32
  c.model.name = 'FCDD_CNN32_S'
  c.batch_size = 64
  c.num_epochs = 12
  c.log_every_steps = 16
  c.checkpoint_every_steps = 64
  c.loss.gauss_std = 1.2
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-6
  c.optim.schedule = 'constant'
  c.eval.quantile = 0.97
  return c
