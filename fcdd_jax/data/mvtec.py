"""MVTec-AD (spec §5.7) as a `Source`: the official directory (`data.root/<category>/...`) or, with
`data.tfds_data_dir`, the tfds builder of `data/mvtec_tfds.py`."""
import os

import numpy as np

from fcdd_jax.evaluation import metrics as evaluation
from fcdd_jax.data import checks
from fcdd_jax.data import constants
from fcdd_jax.data import custom
from fcdd_jax.data import image_io
from fcdd_jax.data import oe
from fcdd_jax.data import source
from fcdd_jax.data import streams
from fcdd_jax.data import transforms
from fcdd_jax.utils import tf_setup

MVTEC_JITTER = ((0.04, 0.04, 0.04, 0.04), (0.005, 0.0005, 0.0005, 0.0005))  # spec §5.7: random choice


def load(config):
  """MVTec-AD category config.data.normal_class (spec §5.7): 240² nearest storage, 224 input, LCN or mean/std
  values, original-resolution masks for the pixel AUC; real test anomalies as training anomalies for
  noise_mode=mvtec(_gt); data.pollution: anomalous test images mixed into the training set, unlabelled (they
  leave the test set; `custom.pollution_plan`)."""
  d = config.data
  names = constants.MVTEC_CLASSES
  c = checks.check_class(config, len(names), names)
  if not d.root or not os.path.isdir(d.root):
    raise FileNotFoundError(
        f'config.data.root={d.root!r} is not a directory: MVTec-AD needs a manual download. Get '
        'mvtec_anomaly_detection.tar.xz from https://www.mvtec.com/company/research/datasets/mvtec-ad, '
        'extract it and pass --config.data.root=<dir containing bottle/, cable/, ...>')
  root = os.path.join(d.root, names[c])
  if not os.path.isdir(root):
    raise FileNotFoundError(f'MVTec-AD category folder {root} is missing (config.data.root={d.root!r})')
  raw, inp = (240, 240), (224, 224)
  if d.tfds_data_dir:  # through the tfds builder (prepared once into data.tfds_data_dir)
    tf_setup.tensorflow()
    from fcdd_jax.data import mvtec_tfds  # pylint: disable=g-import-not-at-top  (imports tensorflow_datasets)
    out = mvtec_tfds.load_category(d.root, names[c], d.tfds_data_dir)
    tr, te = out['train'], out['test']
    data = dict(train=np.stack([evaluation.resize_nearest(x, raw) for x in tr[0]]),
                test=np.stack([evaluation.resize_nearest(x, raw) for x in te[0]]), labels=te[1],
                masks=np.stack([evaluation.resize_nearest(m, raw) for m in te[2]]), masks_orig=te[2],
                defects=te[3])
  else:
    data = custom.read_mvtec_layout(root, 3, raw, d.on_bad_image, image_io.cache_dir(d.root, d.cache_dir),
                                     torch_nearest=True)
  plan, drawn, record = custom.pollution_plan(config, len(data['train']), data)   # data.pollution
  if plan is not None:   # training and test images share the 240 raw size
    data['train'] = plan.gather(data['train'], drawn=drawn['images'])
  mn, mx, mean, std = constants.MVTEC[c]
  if d.preproc in ('lcnaug1',):
    t = transforms.Transform(kind='lcn', lcn_min=mn, lcn_max=mx, input_size=inp, raw_size=raw, channels=3,
                             train_geom='mvtec', hflip=False, noise_std=0.0, mvtec_noise=True, resize='nearest',
                             jitter=MVTEC_JITTER)
  elif d.preproc == 'aug1':
    t = transforms.Transform(mean=mean, std=std, input_size=inp, raw_size=raw, channels=3, train_geom='mvtec',
                             hflip=False, noise_std=0.0, mvtec_noise=True, resize='nearest', jitter=MVTEC_JITTER)
  else:
    raise AssertionError(d.preproc)   # config_checks.check_data allows lcnaug1 and aug1 only
  oe_images, oe_masks = _true_anomalies(config, data)
  if oe_images is None:
    oe_images = oe.load(config, 3, raw, cache_dir=image_io.cache_dir('', d.cache_dir))
  return source.Source(
      name='mvtec', class_names=tuple(names), normal_class=c, transform=t, train_images=data['train'],
      test_images=data['test'], test_labels=data['labels'], test_masks=data['masks'],
      test_masks_original=data['masks_orig'], train_gtmaps=True, size_scale=1.0, oe_images=oe_images,
      oe_masks=oe_masks, train_is_anomaly=None if plan is None else plan.is_anomaly, pollution=record)


def _true_anomalies(config, data):
  """noise_mode mvtec / mvtec_gt (spec §6.2, §6.5): `oe_limit` real anomalies PER DEFECT TYPE from the test
  split, chosen once per run; with data.remove_oe_from_test they leave the test set (spec §11.8; default:
  parity, kept). Modifies `data` in place when removing. Returns (images, masks) or (None, None)."""
  d = config.data
  if not (d.supervise_mode == 'noise' and d.noise_mode in ('mvtec', 'mvtec_gt')):
    return None, None
  if d.noise_mode == 'mvtec_gt' and data['masks'] is None:
    raise ValueError('noise_mode=mvtec_gt needs ground_truth/ masks in data.root')
  limit = d.oe_limit if d.oe_limit and d.oe_limit > 0 else 1 << 30
  rng = streams.rng(config.seed, 'true_anomalies')
  kinds = np.asarray(data['defects'])
  chosen = []
  for kind in sorted(set(kinds.tolist()) - {'good'}):
    idx = np.flatnonzero(kinds == kind)
    chosen += sorted(rng.choice(idx, min(limit, len(idx)), replace=False).tolist())
  if not chosen:
    raise ValueError('noise_mode=mvtec/mvtec_gt: the test split has no anomalous images')
  chosen = np.asarray(chosen)
  images = data['test'][chosen]
  masks = data['masks'][chosen].astype(np.float32) if data['masks'] is not None else None
  if d.remove_oe_from_test:
    keep = np.setdiff1d(np.arange(len(data['test'])), chosen)
    data['test'], data['labels'] = data['test'][keep], data['labels'][keep]
    data['defects'] = [data['defects'][i] for i in keep]
    if data['masks'] is not None:
      data['masks'] = data['masks'][keep]
      data['masks_orig'] = [data['masks_orig'][i] for i in keep] if data['masks_orig'] is not None else None
  return images, masks
