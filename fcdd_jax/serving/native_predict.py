"""Scoring new files with a patch-trained run (`data.patch_size > 0`, issue 27): at native resolution.

A patch-trained run saw its training images at their own pixels (times `data.scale`), so `predict` scores a
file the same way: no resize to a training size; the file (resized by `data.scale`, or by `--scale`) goes
whole through the net, tiled exactly (`tiling`, memory bounded by `--tile`), the heatmap is the Gaussian
receptive-field upsampling of the whole low-resolution map to the scaled size (then, only when the scale is
not 1, resized bilinearly to the file's size), and the score is the run's `eval.image_score` of that whole
map: exactly what the run's evaluation computes for a test image (`native_eval`).
"""
import numpy as np

from fcdd_jax.data import transforms


def is_patch_run(config):
  return int(config.data.get('patch_size', 0) or 0) > 0


def make_scorer(config, preprocessing, variables, tile, net):
  """The run's `native_eval.NativeScorer` (`net`: the run's FCDD net with any_size=True, as evaluation builds
  it) with its value normalisation from preprocessing.json."""
  from fcdd_jax.evaluation import native_eval  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import nets  # pylint: disable=g-import-not-at-top
  p = preprocessing
  t = transforms.Transform(mean=p.get('mean'), std=p.get('std'), kind=p.get('kind', 'normalize'),
                           lcn_min=p.get('lcn_min'), lcn_max=p.get('lcn_max'), channels=int(p['channels']))
  return native_eval.NativeScorer(net, variables, nets.reception(config.model.name), t.normalize,
                                  gauss_std=config.loss.gauss_std, image_score=config.eval.get('image_score', 'mean'),
                                  tile=tile, channels=int(p['channels']), verbose=True)


def scaled_size(h, w, scale):
  return (h, w) if scale == 1 else (max(1, round(h * scale)), max(1, round(w * scale)))


def score(scorer, img, channels, scale):
  """(score, float32 heatmap at the file's own size) of one uint8 image of any size."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = transforms.to_rgb_or_gray(np.asarray(img), channels)
  h, w = img.shape[:2]
  size = scaled_size(h, w, scale)
  if size != (h, w):
    img = transforms.resize_u8(img, size)
  s, heats = scorer.score_batch([img])
  heat = heats[0]
  if heat.shape != (h, w):
    heat = np.asarray(Image.fromarray(heat).resize((w, h), Image.BILINEAR))
  return s[0], heat
