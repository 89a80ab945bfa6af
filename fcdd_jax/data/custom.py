"""Custom image folders (spec §5.9) as a `Source`, and the reader of one MVTec-layout folder (also used by
`data/mvtec.py`).

Layouts, detected from `data.root`: the MVTec layout (`train/good`, `test/<defect>`, optional
`ground_truth/<defect>/<name>_mask.png`), the reference's one-vs-rest layout (`train/<class>/*`,
`test/<class>/*`) and its per-class normal/anomalous layout (`train/<class>/normal`,
`test/<class>/{normal,anomalous}`), optionally with `test_maps/` (the reference's -gtms trees).
"""
import os

import numpy as np

from fcdd_jax.evaluation import metrics as evaluation
from fcdd_jax.data import checks
from fcdd_jax.data import image_io
from fcdd_jax.data import oe
from fcdd_jax.data import pollution
from fcdd_jax.data import source
from fcdd_jax.data import streams
from fcdd_jax.data import transforms
from fcdd_jax.utils.errors import ConfigError


def detect_layout(root):
  """'mvtec' | 'ovr' | 'normal_anomalous' for a custom data root; raises ValueError otherwise."""
  if not root or not os.path.isdir(root):
    raise FileNotFoundError(f'config.data.root={root!r} is not a directory')
  if os.path.isdir(os.path.join(root, 'train', 'good')) and os.path.isdir(os.path.join(root, 'test')):
    return 'mvtec'
  if os.path.isdir(os.path.join(root, 'train')) and os.path.isdir(os.path.join(root, 'test')):
    classes = image_io.subdirs(os.path.join(root, 'train'))
    if classes and all(os.path.isdir(os.path.join(root, 'train', c, 'normal')) for c in classes):
      return 'normal_anomalous'
    if classes:
      return 'ovr'
  raise ConfigError(
      f'config.data.root={root!r} has no known layout; expected train/good + test/<defect> '
      '[+ ground_truth/<defect>/<name>_mask.png] (MVTec layout), train/<class>/* + test/<class>/* (one-vs-rest), '
      'or train/<class>/normal + test/<class>/{normal,anomalous}')


def read_mvtec_layout(root, channels, raw_size, on_bad, cache, torch_nearest=False, keep_original_masks=True,
                      image_resize='nearest'):
  """Reads one MVTec-layout category. Returns dict(train, test, labels, masks (raw size) or None,
  masks_orig (list) or None, defects)."""
  good = os.path.join(root, 'train', 'good')
  train_paths = image_io.require_images(image_io.list_images(good), good)
  test_dir = os.path.join(root, 'test')
  defects = image_io.subdirs(test_dir)
  if not defects:
    raise ValueError(f'no test folders in {test_dir} (expected test/good and test/<defect>)')
  test_paths, labels, kinds = [], [], []
  for dname in defects:
    ps = image_io.list_images(os.path.join(test_dir, dname))
    if not ps:
      raise ValueError(f'empty test folder {os.path.join(test_dir, dname)}')
    test_paths += ps
    labels += [0 if dname == 'good' else 1] * len(ps)
    kinds += [dname] * len(ps)
  kw = dict(torch_nearest=torch_nearest, nearest=image_resize == 'nearest', shorter=image_resize == 'shorter',
            on_bad=on_bad, cache=cache)
  train, train_kept = image_io.read_images(train_paths, channels, raw_size, **kw)
  test, kept = image_io.read_images(test_paths, channels, raw_size, **kw)
  keep = [test_paths.index(p) for p in kept]
  labels = np.asarray(labels)[keep]
  kinds = [kinds[i] for i in keep]
  gt_dir = os.path.join(root, 'ground_truth')
  masks = masks_orig = None
  if os.path.isdir(gt_dir):
    masks, masks_orig = [], []
    expected = set()
    for p, lab, kind in zip(kept, labels, kinds):
      stem = os.path.splitext(os.path.basename(p))[0]
      if lab == 0:
        size = image_io.load_image(p).shape[:2]
        m = np.zeros(size, np.uint8)
      else:
        mp = os.path.join(gt_dir, kind, f'{stem}_mask.png')
        expected.add(os.path.abspath(mp))
        if not os.path.exists(mp):
          raise ValueError(f'missing mask {mp} for test image {p}')
        m = image_io.read_mask(mp)
        isz = image_io.load_image(p).shape[:2]
        if m.shape != isz:
          raise ValueError(f'mask {mp} is {m.shape[1]}x{m.shape[0]} but its image {p} is {isz[1]}x{isz[0]}')
      masks_orig.append(m)
      if torch_nearest:
        masks.append(evaluation.resize_nearest(m, raw_size))
      else:
        masks.append(transforms.resize_u8(m[..., None], raw_size, nearest=True)[..., 0])
    for mp in image_io.list_images(gt_dir):
      if os.path.abspath(mp) not in expected:
        raise ValueError(f'mask {mp} has no test image (expected test/<defect>/<name>.png for <name>_mask.png)')
    masks = np.stack(masks)
  else:
    print(f'warning: no ground_truth/ folder in {root}: training and image AUC work; pixel_auc is null', flush=True)
  return dict(train=train, test=test, labels=labels, masks=masks,
              masks_orig=masks_orig if keep_original_masks else None, defects=kinds, train_paths=train_kept,
              test_paths=list(kept))


TEST_POOL = 'anomalous test images (removed from the test set)'


def drop_test_rows(data, keep):
  """Keeps the test rows `keep` (ascending indices) of a `read_mvtec_layout` dict, in place: every test array."""
  data['test'], data['labels'] = data['test'][keep], np.asarray(data['labels'])[keep]
  for key in ('defects', 'test_paths', 'masks_orig'):
    if data.get(key) is not None:
      data[key] = [data[key][i] for i in keep]
  if data.get('masks') is not None:
    data['masks'] = data['masks'][keep]


def pollution_plan(config, num_train, data, pool_paths=None):
  """data.pollution for a training set of `num_train` nominal images: (Polluted plan, drawn, record) or
  (None, None, None) when clean. With pool_paths=None the pool is the anomalous test images of `data` (MVTec
  layout), which leave the test set (`drop_test_rows`, in place); `drawn` is then dict(images=the drawn test
  images at the test size, paths=their paths or None); otherwise dict(paths=the drawn `pool_paths`). The
  plan's images are placeholders: `Polluted.gather(..., drawn=...)` builds the real arrays."""
  r = pollution.ratio_of(config)
  if r == 0:
    return None, None, None
  n = int(num_train)
  if pool_paths is None:
    labels = np.asarray(data['labels'])
    out = pollution.pollute_from_test(np.zeros((n, 1)), np.zeros((len(labels), 1)), labels, r, seed=config.seed)
    plan, rows = out.polluted, out.removed_test
    paths = data.get('test_paths')
    drawn = dict(images=data['test'][rows], paths=None if paths is None else [paths[i] for i in rows])
    drop_test_rows(data, out.kept_test)
    record = dict(plan.record(r), source=TEST_POOL, test_removed=len(rows))
  else:
    plan = pollution.pollute(np.zeros((n, 1)), np.zeros((len(pool_paths), 1)), r, seed=config.seed,
                             what='pool images')
    drawn = dict(paths=[pool_paths[j] for j in plan.pool_indices])
    record = dict(plan.record(r), source='training images of the other classes / anomalous folder')
  return plan, drawn, record


def read_reference_maps(root, maps_root, test_paths, labels):
  """Binary GT maps at each test image's size from `test_maps/` with the same relative paths and names;
  a missing map is constant (0 for nominal, 1 for anomalous images), as the reference does (spec §5.9)."""
  out = []
  for p, lab in zip(test_paths, labels):
    mp = os.path.join(maps_root, os.path.relpath(p, os.path.join(root, 'test')))
    size = image_io.load_image(p).shape[:2]
    if os.path.exists(mp):
      m = image_io.read_mask(mp)
      if m.shape != size:
        raise ValueError(f'map {mp} is {m.shape[1]}x{m.shape[0]} but its image {p} is {size[1]}x{size[0]}')
    else:
      m = np.full(size, int(lab), np.uint8)
    out.append(m)
  return out


def _read_class_folders(root, layout, names, c, train_size, test_size, has_maps, read_kw):
  """One-vs-rest or normal/anomalous folders of class c: (dict(train, test, labels, masks, masks_orig), train
  paths kept)."""
  if layout == 'ovr':
    folder = os.path.join(root, 'train', names[c])
    train_paths = image_io.require_images(image_io.list_images(folder), folder)
    test_paths, labels = [], []
    for nm in image_io.subdirs(os.path.join(root, 'test')):
      folder = os.path.join(root, 'test', nm)
      ps = image_io.require_images(image_io.list_images(folder), folder)
      test_paths += ps
      labels += [0 if nm == names[c] else 1] * len(ps)
  else:
    base = os.path.join(root, 'train', names[c], 'normal')
    train_paths = image_io.require_images(image_io.list_images(base), base)
    test_paths, labels = [], []
    for sub, lab in (('normal', 0), ('anomalous', 1)):
      folder = os.path.join(root, 'test', names[c], sub)
      ps = image_io.list_images(folder) if os.path.isdir(folder) else []
      test_paths += ps
      labels += [lab] * len(ps)
    image_io.require_images(test_paths, os.path.join(root, 'test', names[c]))
  train, train_paths = image_io.read_images(train_paths, 3, train_size, **read_kw)
  test, kept = image_io.read_images(test_paths, 3, test_size, **read_kw)
  idx = {p: i for i, p in enumerate(test_paths)}
  labels = np.asarray(labels)[[idx[p] for p in kept]]
  data = dict(train=train, test=test, labels=labels, masks=None, masks_orig=None)
  if has_maps:  # the reference's -gtms trees (spec §5.9)
    data['masks_orig'] = read_reference_maps(root, os.path.join(root, 'test_maps'), kept, labels)
    data['masks'] = np.stack([transforms.resize_u8(m[..., None], test_size, nearest=True)[..., 0]
                              for m in data['masks_orig']])
  return data, train_paths


def load(config):
  """Custom folders (spec §5.9), stored as the reference's transforms see them.

  preproc aug1 without maps: shorter side to 248 (bilinear, antialiased) + centre crop, train RandomCrop(224),
  test CenterCrop(224). aug1 with maps (ground_truth/ or test_maps/, the reference's -gtms): images and maps
  squashed with nearest; training keeps a 248 copy (random 224 crop) AND a copy resized straight to 224 (the
  other branch of the reference's RandomChoice), test images and maps go straight to 224. none: squashed to
  224 (bilinear; nearest with maps), no augmentation. Normalisation: mean/std of the nominal training images
  squashed to 224 (bilinear) from the originals. The GT-map loss (spec §3.2) is used with maps only (the
  reference's -gtms datasets yield maps for every supervise mode); without maps the label loss (§3.1).
  malformed_normal draws its noise at each training image's original resolution (anomalies.Resampling).
  """
  d = config.data
  root = d.root
  pre = 'none' if d.preproc in ('', 'default') else d.preproc   # checks.PREPROCS['custom']: aug1, none
  layout = detect_layout(root)
  inp = (224, 224)
  cache = image_io.cache_dir(root, d.cache_dir)
  has_maps = os.path.isdir(os.path.join(root, 'ground_truth' if layout == 'mvtec' else 'test_maps'))
  # how originals reach the stored arrays (the geometry of the reference's Resize), train and test
  if pre == 'aug1':
    how = 'nearest' if has_maps else 'shorter'
    train_size, test_size = (248, 248), (inp if has_maps else (248, 248))
  else:
    how = 'nearest' if has_maps else 'bilinear'
    train_size = test_size = inp
  read_kw = dict(nearest=how == 'nearest', shorter=how == 'shorter', on_bad=d.on_bad_image, cache=cache)
  train_labels = None
  if layout == 'mvtec':
    names = (os.path.basename(os.path.normpath(root)),)
    c = checks.check_class(config, 1, names)
    if d.supervise_mode == 'other':
      raise ConfigError(f'config.data.supervise_mode=other needs labelled training anomalies, but {root} has the '
                       'MVTec layout (train/good only); use train/<class>/{normal,anomalous} or one-vs-rest folders')
    data = read_mvtec_layout(root, 3, test_size, d.on_bad_image, cache, image_resize=how)
    train_paths = data['train_paths']
    if train_size != test_size:
      data['train'], _ = image_io.read_images(train_paths, 3, train_size, **read_kw)
  else:
    names = image_io.subdirs(os.path.join(root, 'train'))
    c = checks.check_class(config, len(names), names)
    data, train_paths = _read_class_folders(root, layout, names, c, train_size, test_size, has_maps, read_kw)
  nominal_paths = list(train_paths)
  # the second copy of the 'mvtec' geometry's resize branch: originals straight to the input size
  train_input = None
  if pre == 'aug1' and has_maps:
    train_input, _ = image_io.read_images(nominal_paths, 3, inp, **read_kw)
  # spec §5.9: mean/std over the nominal training images of the class squashed to 224 (bilinear)
  if how == 'bilinear':
    small = data['train']
  else:
    small, _ = image_io.read_images(nominal_paths, 3, inp, nearest=False, shorter=False, on_bad=d.on_bad_image,
                                    cache=cache)
  mean, std = transforms.channel_stats(small)
  del small
  sizes = image_io.original_sizes(nominal_paths)
  if d.supervise_mode == 'other':   # spec §5.9: nominal + as many labelled anomalies, drawn with replacement
    if layout == 'ovr':
      anom_paths = [p for k, nm in enumerate(names) if k != c
                    for p in image_io.list_images(os.path.join(root, 'train', nm))]
    else:
      folder = os.path.join(root, 'train', names[c], 'anomalous')
      anom_paths = image_io.list_images(folder) if os.path.isdir(folder) else []
    if not anom_paths:
      raise ConfigError(f'config.data.supervise_mode=other needs labelled training anomalies: '
                       + ('images of other classes in train/' if layout == 'ovr' else
                          f'{os.path.join(root, "train", names[c], "anomalous")}/ holds none'))
    anom, anom_paths = image_io.read_images(anom_paths, 3, train_size, **read_kw)
    n = len(data['train'])
    pick = streams.rng(config.seed, 'labelled_pick').integers(0, len(anom), n)
    train_labels = np.concatenate([np.zeros(n, np.int32), np.ones(n, np.int32)])
    data['train'] = np.concatenate([data['train'], anom[pick]])
    if train_input is not None:
      anom_input, _ = image_io.read_images(anom_paths, 3, inp, **read_kw)
      train_input = np.concatenate([train_input, anom_input[pick]])
    sizes = None   # fixed labels: nothing is generated
  polluted, record = _pollute(config, layout, root, names, c, data, train_input, sizes, train_size, inp, read_kw)
  if polluted is not None:
    data['train'], train_input, sizes, polluted = polluted
  if pre == 'aug1':
    t = transforms.Transform(mean=mean, std=std, input_size=inp, raw_size=test_size, channels=3,
                             train_geom='mvtec' if has_maps else 'crop', test_center=not has_maps, hflip=True,
                             orientation=config.data.get('orientation', ''), noise_std=0.001,
                             jitter=(0.01, 0.01, 0.01, 0.01), resize=how)
  else:
    t = transforms.Transform(mean=mean, std=std, input_size=inp, raw_size=inp, channels=3, train_geom='none',
                             hflip=False, orientation=config.data.get('orientation', ''), noise_std=0.0, resize=how)
  masks_orig = None
  if data['masks'] is not None:  # spec §5.9: each map nearest-resized to the smallest side among them
    side = min(min(m.shape) for m in data['masks_orig'])
    masks_orig = [evaluation.resize_nearest(m, (side, side)) for m in data['masks_orig']]
  # size_scale 1: the reference's confetti sizes are pixels at the resolution it draws at (the original for
  # malformed_normal, the 248 raw size for pure noise images)
  return source.Source(
      name='custom', class_names=tuple(names), normal_class=c, transform=t, train_images=data['train'],
      test_images=data['test'], test_labels=data['labels'], test_masks=data['masks'],
      test_masks_original=masks_orig, train_labels=train_labels, train_gtmaps=has_maps,
      train_images_input=train_input, train_original_sizes=sizes, train_resize=how, size_scale=1.0,
      oe_images=oe.load(config, 3, train_size, cache_dir=cache),
      train_is_anomaly=None if polluted is None else polluted.is_anomaly, pollution=record)


def _pollute(config, layout, root, names, c, data, train_input, sizes, train_size, inp, read_kw):
  """data.pollution for custom folders: the drawn anomalies read like the training images (both copies and
  their original sizes). Pools: the MVTec layout's anomalous test images (they leave the test set), the
  other classes' training images (one-vs-rest), train/<class>/anomalous (normal/anomalous layout).
  Returns ((train, train_input, sizes, plan), record) or (None, None)."""
  if pollution.ratio_of(config) == 0:
    return None, None
  pool_paths = None
  if layout == 'ovr':
    pool_paths = [p for k, nm in enumerate(names) if k != c
                  for p in image_io.list_images(os.path.join(root, 'train', nm))]
  elif layout == 'normal_anomalous':
    folder = os.path.join(root, 'train', names[c], 'anomalous')
    pool_paths = image_io.list_images(folder) if os.path.isdir(folder) else []
  if pool_paths is not None and not pool_paths:
    raise ConfigError(f'config.data.pollution={config.data.pollution}: {root} has no images to mix in (other '
                     'classes in train/, or train/<class>/anomalous/)')
  plan, drawn, record = pollution_plan(config, len(data['train']), data, pool_paths)
  drawn = drawn['paths']
  drawn_imgs, kept = image_io.read_images(drawn, 3, train_size, **read_kw)
  if len(kept) != len(drawn):
    raise ConfigError(f'config.data.pollution: {len(drawn) - len(kept)} of the drawn anomalies are unreadable')
  train = plan.gather(data['train'], drawn=drawn_imgs)
  if train_input is not None:
    train_input = plan.gather(train_input, drawn=image_io.read_images(drawn, 3, inp, **read_kw)[0])
  if sizes is not None:
    sizes = plan.gather(np.asarray(sizes).reshape(-1, 2), drawn=image_io.original_sizes(drawn))
  return (train, train_input, sizes, plan), record
