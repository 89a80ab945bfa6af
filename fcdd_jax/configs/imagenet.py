"""ImageNet-30 one-vs-rest with ImageNet-22k Outlier Exposure (spec §5.6, §7.2; paper: mean AUC ~0.94).

  python -m fcdd_jax.main --config configs/imagenet.py --workdir runs/imagenet --config.data.normal_class=0 \
      --config.data.root=/data/imagenet --config.data.oe_root=/data/imagenet22k/fall11_whole_extracted

data.root: ImageNet-1k as train/<wnid>/ + val/<wnid>/ folders, or the directory holding ILSVRC2012_img_train.tar
and ILSVRC2012_img_val.tar (tfds imagenet2012 manual download; prepared once into data.tfds_data_dir).
data.oe_root: the ImageNet-22k fall11 synset folders (the 30 ImageNet-30 synsets are excluded). All 30 classes:
  python launch/sweep.py --config configs/imagenet.py --workdir runs/imagenet --classes 0-29 --seeds 0-4 -- \
      --config.data.root=/data/imagenet --config.data.oe_root=/data/imagenet22k/fall11_whole_extracted
"""
from fcdd_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'imagenet'
  c.data.preproc = 'aug1'
  c.data.supervise_mode = 'noise'
  c.data.noise_mode = 'imagenet22k'
  c.model.name = 'FCDD_CNN224_VGG_NOPT'
  c.batch_size = 200
  c.num_epochs = 600
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-6
  c.optim.schedule = 'milestones'
  c.optim.milestones = (400, 500)
  c.loss.gauss_std = 8.0
  c.eval.quantile = 0.97
  c.log_every_steps = 7
  c.checkpoint_every_steps = 70
  return c
