"""Pascal VOC 2007 "Clever Hans" experiment: horse images with nominal_label=1, ImageNet OE (spec §5.8).

  python -m fcdd_jax.main --config configs/pascal_voc.py --workdir runs/voc \
      --config.data.root=/data/VOCdevkit --config.data.oe_root=/data/imagenet/val

data.root: a VOCdevkit/VOC2007 tree (empty: tfds voc/2007, downloaded on first use). data.oe_root: ImageNet-1k
val as <wnid>/ folders (or the directory with ILSVRC2012_img_val.tar for tfds imagenet2012); classes whose
names contain a VOC word are excluded (data/imagenet.py VOC_EXCLUDED_IMAGENET1K). heatmaps show horse evidence.
"""
from fcdd_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'pascal_voc'
  c.data.normal_class = 0
  c.data.nominal_label = 1
  c.data.preproc = 'aug1'
  c.data.supervise_mode = 'noise'
  c.data.noise_mode = 'imagenet'
  c.model.name = 'FCDD_CNN224_VGG_NOPT'
  c.batch_size = 200
  c.num_epochs = 600
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-6
  c.optim.schedule = 'milestones'
  c.optim.milestones = (400, 500)
  c.loss.gauss_std = 8.0
  c.eval.quantile = 0.99
  return c
