"""Your own images: any folder in the MVTec layout (train/good, test/<defect>, optional
ground_truth/<defect>/<name>_mask.png) or the reference's custom layouts (spec §5.9).

  python -m fcdd_jax.main --config configs/custom.py --workdir runs/mydata \
      --config.data.root=/data/my_parts --config.model.pretrained_path=vgg11_bn.npz

Without pretrained weights use --config.model.name=FCDD_CNN224_VGG_NOPT (from scratch).

The recipe (what detects real defects after a short CPU budget; numbers in bench/README.md, "Fidelity"):
* confetti on nominal images (malformed_normal_gt + generated_maps): the net is trained to light up the
  pixels the confetti changed and nothing else (GT-map loss), with or without masks in the folder;
* optimiser `auto`: SGD-Nesterov for a pretrained net, Adam for one trained from scratch (the authors'
  split: Adam for their from-scratch VGG on ImageNet-30 / VOC);
* precise_bn: BatchNorm statistics recomputed on the training images after the last step;
* image score = the largest pixel of the upsampled heatmap (a small defect is a small share of the image).
The authors' custom runner instead: --config.data.supervise_mode=malformed_normal
--config.data.generated_maps=False --config.optim.name=sgd --config.model.precise_bn=False
--config.eval.image_score=mean. For Outlier Exposure from any image folder: --config.data.supervise_mode=noise
--config.data.noise_mode=folder --config.data.oe_root=DIR --config.data.generated_maps=False.
"""
from fcdd_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'custom'
  c.data.preproc = 'aug1'
  c.data.supervise_mode = 'malformed_normal_gt'
  c.data.noise_mode = 'confetti'
  c.data.generated_maps = True
  c.model.name = 'FCDD_CNN224_VGG_F'
  c.model.precise_bn = True
  c.batch_size = 128
  c.num_epochs = 200
  c.optim.name = 'auto'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-6
  c.optim.schedule = 'lambda'
  c.optim.gamma = 0.985
  c.loss.gauss_std = 10.0
  c.eval.quantile = 0.97
  c.eval.image_score = 'max'
  return c
