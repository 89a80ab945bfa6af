"""MVTec-AD semi-supervised: one real anomaly with its mask per defect type (spec §6.5; paper ~0.96 pixel AUC).

  python -m fcdd_jax.main --config configs/mvtec_semi.py --workdir runs/mvtec_semi \
      --config.data.normal_class=0 --config.data.root=/data/mvtec_anomaly_detection \
      --config.model.pretrained_path=vgg11_bn.npz
"""
from fcdd_jax.configs import mvtec


def get_config():
  c = mvtec.get_config()
  c.data.supervise_mode = 'noise'
  c.data.noise_mode = 'mvtec_gt'
  c.data.oe_limit = 1
  return c
