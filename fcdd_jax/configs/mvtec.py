"""MVTec-AD, the paper's "unsupervised" setting: confetti noise on nominal images (malformed_normal).

  python -m fcdd_jax.main --config configs/mvtec.py --workdir runs/mvtec --config.data.normal_class=0 \
      --config.data.root=/data/mvtec_anomaly_detection --config.model.pretrained_path=vgg11_bn.npz

Spec §5.7, §6.4, §7.2. Paper: mean pixel AUC ~0.92 over the 15 classes. FCDD_CNN224_VGG_F needs
torchvision's ImageNet vgg11_bn weights (see README, "Pretrained weights"), or use
--config.model.name=FCDD_CNN224_VGG_NOPT to train from scratch.
"""
from fcdd_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'mvtec'
  c.data.preproc = 'lcnaug1'
  c.data.supervise_mode = 'malformed_normal'
  c.data.noise_mode = 'confetti'
  c.data.enlarge = 10
  c.model.name = 'FCDD_CNN224_VGG_F'
  c.batch_size = 128
  c.num_epochs = 200
  c.optim.name = 'sgd'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = 'lambda'
  c.optim.gamma = 0.985
  c.loss.gauss_std = 12.0
  c.eval.quantile = 0.99
  c.log_every_steps = 17
  c.checkpoint_every_steps = 170
  return c
