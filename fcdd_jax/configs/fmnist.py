"""Fashion-MNIST one-vs-rest with CIFAR-100 Outlier Exposure (spec §7.2; paper: mean AUC ~0.89).

  python -m fcdd_jax.main --config configs/fmnist.py --workdir runs/fmnist --config.data.normal_class=0

Data: tfds `fashion_mnist` (data.tfds_data_dir) or the official idx files in data.root (the Debian
package dataset-fashion-mnist is found automatically). OE: tfds cifar100, or any image folder with
--config.data.noise_mode=folder --config.data.oe_root=/path/to/cifar10/train.
"""
from fcdd_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'fmnist'
  c.data.preproc = 'lcnaug1'
  c.data.supervise_mode = 'noise'
  c.data.noise_mode = 'cifar100'
  c.model.name = 'FCDD_CNN28_W'
  c.batch_size = 128
  c.num_epochs = 400
  c.optim.name = 'sgd'
  c.optim.lr = 1e-2
  c.optim.weight_decay = 1e-6
  c.optim.schedule = 'lambda'
  c.optim.gamma = 0.98
  c.loss.gauss_std = 1.2
  c.eval.quantile = 0.85
  c.log_every_steps = 47
  c.checkpoint_every_steps = 470
  return c
