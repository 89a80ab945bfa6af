"""Your own images: any folder in the MVTec layout (train/good, test/<defect>, optional
ground_truth/<defect>/<name>_mask.png) or the reference's custom layouts (spec §5.9).

  python -m fcdd_jax.main --config configs/custom.py --workdir runs/mydata \
      --config.data.root=/data/my_parts --config.model.pretrained_path=vgg11_bn.npz

Default: confetti on nominal images (malformed_normal, as MVTec) since most users have no anomalies to
train with; set --config.data.supervise_mode=noise --config.data.noise_mode=folder
--config.data.oe_root=DIR for Outlier Exposure from any image folder. Without pretrained weights use
--config.model.name=FCDD_CNN224_VGG_NOPT.
"""
from fcdd_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'custom'
  c.data.preproc = 'aug1'
  c.data.supervise_mode = 'malformed_normal'
  c.data.noise_mode = 'confetti'
  c.model.name = 'FCDD_CNN224_VGG_F'
  c.batch_size = 128
  c.num_epochs = 200
  c.optim.name = 'sgd'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-6
  c.optim.schedule = 'lambda'
  c.optim.gamma = 0.985
  c.loss.gauss_std = 10.0
  c.eval.quantile = 0.97
  return c
