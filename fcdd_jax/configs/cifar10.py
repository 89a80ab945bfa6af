"""CIFAR-10 one-vs-rest with CIFAR-100 Outlier Exposure (spec §7.2; paper: mean AUC ~0.95).

  python -m fcdd_jax.main --config configs/cifar10.py --workdir runs/cifar10 --config.data.normal_class=0

Data: tfds `cifar10` or image folders train/<class>/*, test/<class>/* in data.root. OE: tfds cifar100
(or --config.data.noise_mode=folder --config.data.oe_root=DIR). Limited OE: --config.data.oe_limit=8.
"""
from fcdd_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'cifar10'
  c.data.preproc = 'aug1'
  c.data.supervise_mode = 'noise'
  c.data.noise_mode = 'cifar100'
  c.model.name = 'FCDD_CNN32_LW3K'
  c.batch_size = 200
  c.num_epochs = 600
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-6
  c.optim.schedule = 'milestones'
  c.optim.milestones = (400, 500)
  c.optim.milestone_factor = 0.1
  c.loss.gauss_std = 1.2
  c.eval.quantile = 0.85
  c.log_every_steps = 25
  c.checkpoint_every_steps = 250
  return c
