"""Dataset sources: decode files once into uint8 arrays at the dataset's raw size (cached), then hand them
to `input_pipeline.Pipeline` (spec §5).

* custom folders (spec §5.9) — the MVTec layout (`train/good`, `test/<defect>`, optional
  `ground_truth/<defect>/<name>_mask.png`) and the reference's one-vs-rest and per-class normal/anomalous
  layouts, detected from `data.root`;
* MVTec-AD (spec §5.7) from the official directory (`data.root/<category>/...`), 240² nearest storage,
  original-resolution masks for pixel AUC;
* Fashion-MNIST from the official idx files (or tfds `fashion_mnist`), CIFAR-10 from `train/<class>/*`,
  `test/<class>/*` folders (or tfds `cifar10`); one-vs-rest (spec §5.2);
* ImageNet-30 and Pascal VOC live in `data/imagenet.py` and `data/voc.py`; Outlier Exposure sources in
  `data/oe.py`.
"""
import concurrent.futures
import gzip
import hashlib
import logging
import os
import tempfile

import numpy as np

from fcdd_jax import evaluation
from fcdd_jax import input_pipeline as ip
from fcdd_jax import progress
from fcdd_jax.data import constants

# Decoded with Pillow. GIF is left out on purpose (palette-limited, often animated): list_images names it.
IMG_EXT = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pbm', '.pnm')
FMNIST_DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'
MVTEC_JITTER = ((0.04, 0.04, 0.04, 0.04), (0.005, 0.0005, 0.0005, 0.0005))  # spec §5.7: random choice


# ----------------------------------------------------------------------------------------------------
# Files

def list_images(folder, recursive=True):
  """Sorted paths of the image files (extension in IMG_EXT, any case) under `folder`.

  Hidden files and folders (names starting with '.', e.g. .DS_Store, ._x.png, caches) are left out quietly.
  Every other file that is not a supported image (a .gif, .txt, ...) is named in ONE warning line per call
  (count + first five names), so a stray file in a training folder is visible instead of silently ignored.
  """
  out, other = [], []
  for dirpath, dirnames, files in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for f in sorted(files):
      if not f.startswith('.'):
        (out if f.lower().endswith(IMG_EXT) else other).append(os.path.join(dirpath, f))
    if not recursive:
      break
  if other:
    names = ', '.join(os.path.relpath(p, folder) for p in other[:5]) + (', ...' if len(other) > 5 else '')
    logging.warning('skipped %d file%s in %s that %s not a supported image (%s): %s', len(other),
                    's' * (len(other) > 1), folder, 'are' if len(other) > 1 else 'is', ' '.join(IMG_EXT), names)
  return out


def load_image(path):
  """Decodes any image Pillow reads to uint8 [H,W,C], C = 1 (gray) or 3 (colour); first frame only.

  Value rules (fixed per mode, never per-image min-max):
  * 8-bit L / RGB: unchanged; '1' (bilevel): 0 / 255.
  * 16-bit gray ('I;16', 'I;16L', 'I;16B', 'I;16N'; PNG and TIFF): v -> round(v * 255 / 65535) = round(v / 257),
    so 0..65535 spans 0..255. 32-bit integer 'I' holds such 16-bit samples: clipped to 0..65535, same rule.
  * 16-bit RGB / RGBA / LA (PNG, TIFF): Pillow itself decodes these to 8 bits by keeping the high byte
    (v >> 8 = floor(v / 256)); that is at most one level from the rule above and also spans 0..255.
  * float 'F': NaN -> 0; if every value lies in [0, 1] the image is scaled by 255, otherwise values are read
    as 0..255 levels and clipped; then rounded.
  * Alpha (RGBA, LA, PA, palette transparency) is dropped, not composited: pixels keep their stored colour.
  * Palette ('P', 'PA') -> RGB of the palette; CMYK (incl. Adobe-inverted CMYK JPEG), YCbCr, LAB, HSV -> RGB
    by Pillow's conversion (no ICC colour management).
  Raises ValueError naming the file when it cannot be read.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im.load()
      arr = _pil_to_uint8(im)
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many kinds)
    raise ValueError(f'cannot read image {path}: {type(e).__name__}: {e}') from None
  return arr[..., None] if arr.ndim == 2 else arr


def _pil_to_uint8(im):
  """The rules of `load_image` for one decoded Pillow image: uint8 [H,W] or [H,W,3]."""
  mode = im.mode
  if mode in ('L', 'RGB'):
    return np.asarray(im)
  if mode == '1':
    return np.asarray(im.convert('L'))
  if mode.startswith('I;16') or mode == 'I':
    v = np.asarray(im).astype(np.float64)
    return np.rint(np.clip(v, 0, 65535) / 257.0).astype(np.uint8)
  if mode == 'F':
    v = np.nan_to_num(np.asarray(im, np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if v.size and v.min() >= 0.0 and v.max() <= 1.0:
      v = v * 255.0
    return np.rint(np.clip(v, 0, 255)).astype(np.uint8)
  if mode in ('LA', 'La'):
    return np.asarray(im)[..., 0]
  return np.asarray(im.convert('RGB'))   # P, PA, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV, ...


def default_cache_root():
  """$XDG_CACHE_HOME/fcdd_jax, else ~/.cache/fcdd_jax: the user's cache, never the data folder."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'fcdd_jax')


def _cache_dir(config, root):
  """Directory for decoded-image caches of the data in `root`: `<cache>/<name>-<hash of abs root>`.

  <cache> is `config.data.cache_dir`, else `default_cache_root()` (a temporary directory if that cannot be
  created). Nothing is ever written under `root`: data folders may be read-only or shared."""
  base = config.data.cache_dir
  if base:
    try:
      os.makedirs(base, exist_ok=True)
    except OSError as e:
      raise ValueError(f'config.data.cache_dir={base!r} cannot be created: {e.strerror or e}') from None
  else:
    base = default_cache_root()
    try:
      os.makedirs(base, exist_ok=True)
    except OSError:
      base = os.path.join(tempfile.gettempdir(), f'fcdd_jax_cache-{os.getuid() if hasattr(os, "getuid") else 0}')
      os.makedirs(base, exist_ok=True)
  if not root:
    return base
  absroot = os.path.abspath(root)
  name = os.path.basename(absroot.rstrip(os.sep)) or 'root'
  d = os.path.join(base, f'{name}-{hashlib.sha1(absroot.encode()).hexdigest()[:10]}')
  os.makedirs(d, exist_ok=True)
  return d


_SKIP_SHOWN = 5   # skipped files named one per line; the rest are counted


def read_images(paths, channels, size, *, nearest=False, torch_nearest=False, shorter=False, on_bad='error',
                cache=None):
  """Decodes `paths` to uint8 [N,h,w,channels] at `size` (None = keep; all must then match).

  Returns (array, kept_paths). Cached in `cache` (a directory) by absolute file paths, sizes and mtimes.
  With on_bad='skip' unreadable files are left out (named on one warning line each, the first few); a list
  in which no file is readable is an error naming the folder."""
  key = None
  if cache:
    h = hashlib.sha1(repr((channels, size, nearest, torch_nearest, shorter)).encode())
    for p in paths:
      st = os.stat(p)
      h.update(f'{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}'.encode())
    key = os.path.join(cache, f'images_{h.hexdigest()[:20]}.npz')
    if os.path.exists(key):
      with np.load(key, allow_pickle=False) as z:
        return z['images'], list(z['paths'])
  def decode(p):
    try:
      img = load_image(p)
    except ValueError as e:
      return e
    img = ip.to_rgb_or_gray(img, channels)
    if size is not None:
      if shorter:
        img = ip.resize_shorter_crop(img, size[0])
      elif torch_nearest:
        img = evaluation.resize_nearest(img, size)
      else:
        img = ip.resize_u8(img, size, nearest=nearest)
    return img

  out, kept, skipped = [], [], []
  folder = os.path.dirname(os.path.commonprefix([os.path.abspath(p) for p in paths])) if paths else ''
  with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:  # PIL decodes without the GIL
    for p, img in progress.track(zip(paths, pool.map(decode, paths)), f'decoding images in {folder}',
                                 len(paths), 'images'):
      if isinstance(img, ValueError):
        if on_bad == 'skip':
          skipped.append(str(img))
          if len(skipped) <= _SKIP_SHOWN:
            print(f'warning: {img} (skipped: data.on_bad_image=skip)', flush=True)
          continue
        raise ValueError(f'{img}; fix or remove it, or set --config.data.on_bad_image=skip') from None
      out.append(img)
      kept.append(p)
  if paths and not out:
    folder = os.path.commonpath([os.path.abspath(os.path.dirname(p)) for p in paths])
    raise ValueError(f'none of the {len(paths)} images in {folder} can be read (data.on_bad_image=skip left out '
                     f'every one; the first: {skipped[0] if skipped else "?"})')
  if len(skipped) > _SKIP_SHOWN:
    print(f'warning: {len(skipped)} unreadable images were skipped in total (data.on_bad_image=skip)', flush=True)
  if size is None and out and len({o.shape for o in out}) > 1:
    raise ValueError(f'images differ in size ({out[0].shape} vs others) in {os.path.dirname(paths[0])}')
  arr = np.stack(out) if out else np.zeros((0,) + tuple(size or (1, 1)) + (channels,), np.uint8)
  if key:
    tmp = f'{key}.{os.getpid()}.tmp.npz'   # per process: several processes of one host may fill the cache
    try:
      np.savez(tmp, images=arr, paths=np.asarray(kept))
      os.replace(tmp, key)
    except OSError as e:   # a full or read-only cache costs speed, not the run
      print(f'warning: could not write the image cache {key}: {e.strerror or e}', flush=True)
      if os.path.exists(tmp):
        os.remove(tmp)
  return arr, kept


def read_mask(path):
  m = load_image(path)[..., 0]
  return (m > 0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Layouts

def _subdirs(d):
  return sorted(x for x in os.listdir(d) if os.path.isdir(os.path.join(d, x)) and not x.startswith('.'))


def detect_layout(root):
  """'mvtec' | 'ovr' | 'normal_anomalous' for a custom data root; raises ValueError otherwise."""
  if not root or not os.path.isdir(root):
    raise FileNotFoundError(f'config.data.root={root!r} is not a directory')
  if os.path.isdir(os.path.join(root, 'train', 'good')) and os.path.isdir(os.path.join(root, 'test')):
    return 'mvtec'
  if os.path.isdir(os.path.join(root, 'train')) and os.path.isdir(os.path.join(root, 'test')):
    classes = _subdirs(os.path.join(root, 'train'))
    if classes and all(os.path.isdir(os.path.join(root, 'train', c, 'normal')) for c in classes):
      return 'normal_anomalous'
    if classes:
      return 'ovr'
  raise ValueError(
      f'config.data.root={root!r} has no known layout; expected train/good + test/<defect> '
      '[+ ground_truth/<defect>/<name>_mask.png] (MVTec layout), train/<class>/* + test/<class>/* (one-vs-rest), '
      'or train/<class>/normal + test/<class>/{normal,anomalous}')


def _nonempty(paths, folder):
  if not paths:
    raise ValueError(f'no images in {folder} (extensions: {", ".join(IMG_EXT)})')
  return paths


def mvtec_layout(root, channels, raw_size, on_bad, cache, torch_nearest=False, keep_original_masks=True,
                 image_resize='nearest'):
  """Reads one MVTec-layout category. Returns dict(train, test, labels, masks (raw size) or None,
  masks_orig (list) or None, defects)."""
  train_paths = _nonempty(list_images(os.path.join(root, 'train', 'good')), os.path.join(root, 'train', 'good'))
  test_dir = os.path.join(root, 'test')
  defects = _subdirs(test_dir)
  if not defects:
    raise ValueError(f'no test folders in {test_dir} (expected test/good and test/<defect>)')
  test_paths, labels, kinds = [], [], []
  for dname in defects:
    ps = list_images(os.path.join(test_dir, dname))
    if not ps:
      raise ValueError(f'empty test folder {os.path.join(test_dir, dname)}')
    test_paths += ps
    labels += [0 if dname == 'good' else 1] * len(ps)
    kinds += [dname] * len(ps)
  kw = dict(torch_nearest=torch_nearest, nearest=image_resize == 'nearest', shorter=image_resize == 'shorter',
            on_bad=on_bad, cache=cache)
  train, train_kept = read_images(train_paths, channels, raw_size, **kw)
  test, kept = read_images(test_paths, channels, raw_size, **kw)
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
        size = load_image(p).shape[:2]
        m = np.zeros(size, np.uint8)
      else:
        mp = os.path.join(gt_dir, kind, f'{stem}_mask.png')
        expected.add(os.path.abspath(mp))
        if not os.path.exists(mp):
          raise ValueError(f'missing mask {mp} for test image {p}')
        m = read_mask(mp)
        isz = load_image(p).shape[:2]
        if m.shape != isz:
          raise ValueError(f'mask {mp} is {m.shape[1]}x{m.shape[0]} but its image {p} is {isz[1]}x{isz[0]}')
      masks_orig.append(m)
      if torch_nearest:
        masks.append(evaluation.resize_nearest(m, raw_size))
      else:
        masks.append(ip.resize_u8(m[..., None], raw_size, nearest=True)[..., 0])
    for mp in list_images(gt_dir):
      if os.path.abspath(mp) not in expected:
        raise ValueError(f'mask {mp} has no test image (expected test/<defect>/<name>.png for <name>_mask.png)')
    masks = np.stack(masks)
  else:
    print(f'warning: no ground_truth/ folder in {root}: training and image AUC work; pixel_auc is null', flush=True)
  return dict(train=train, test=test, labels=labels, masks=masks,
              masks_orig=masks_orig if keep_original_masks else None, defects=kinds, train_paths=train_kept)


# ----------------------------------------------------------------------------------------------------
# Datasets

def _check_class(config, num, names):
  c = config.data.normal_class
  if not 0 <= c < num:
    raise ValueError(f'config.data.normal_class={c} is out of range for {config.data.name} '
                     f'({num} classes: 0..{num - 1} = {", ".join(names)})')
  return c


def _info(config, name, shape, names, c, n_train, train_gt, test_gt, n_test, transform):
  d = config.data
  return ip.Info(name=name, image_shape=shape, num_classes=len(names), class_names=tuple(names), normal_class=c,
                 nominal_label=d.nominal_label, num_train=n_train * max(1, d.enlarge),
                 steps_per_epoch=ip._steps_per_epoch(n_train, d.enlarge, config.batch_size),  # pylint: disable=protected-access
                 train_gtmaps=train_gt, test_gtmaps=test_gt, num_test=n_test,
                 preprocessing=transform.describe(name, c))


def _oe_images(config, channels, raw_size, cache_dir=''):
  from fcdd_jax.data import oe  # pylint: disable=g-import-not-at-top
  return oe.load(config, channels, raw_size, cache_dir=cache_dir or _cache_dir(config, ''))


def _reference_maps(root, maps_root, test_paths, labels):
  """Binary GT maps at each test image's size from `test_maps/` with the same relative paths and names;
  a missing map is constant (0 for nominal, 1 for anomalous images), as the reference does (spec §5.9)."""
  out = []
  for p, lab in zip(test_paths, labels):
    mp = os.path.join(maps_root, os.path.relpath(p, os.path.join(root, 'test')))
    size = load_image(p).shape[:2]
    if os.path.exists(mp):
      m = read_mask(mp)
      if m.shape != size:
        raise ValueError(f'map {mp} is {m.shape[1]}x{m.shape[0]} but its image {p} is {size[1]}x{size[0]}')
    else:
      m = np.full(size, int(lab), np.uint8)
    out.append(m)
  return out


CUSTOM_PREPROC = ('aug1', 'none')   # the reference's custom runner (spec §5.9); '' and 'default' mean none


def _original_sizes(paths):
  """(h, w) of each image file, from the headers (no decoding)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for p in paths:
    with Image.open(p) as im:
      out.append((im.size[1], im.size[0]))
  return np.asarray(out, np.int64).reshape(-1, 2)


def _custom(config, pi, pc):
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
  pre = 'none' if d.preproc in ('', 'default') else d.preproc
  if pre not in CUSTOM_PREPROC:
    raise ValueError(f'config.data.preproc={d.preproc!r} is not available for custom data; allowed: '
                     f'{", ".join(CUSTOM_PREPROC)} (spec §5.9; lcn/lcnaug1 need per-class constants)')
  layout = detect_layout(root)
  inp = (224, 224)
  cache = _cache_dir(config, root)
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
    c = _check_class(config, 1, names)
    if d.supervise_mode == 'other':
      raise ValueError(f'config.data.supervise_mode=other needs labelled training anomalies, but {root} has the '
                       'MVTec layout (train/good only); use train/<class>/{normal,anomalous} or one-vs-rest folders')
    data = mvtec_layout(root, 3, test_size, d.on_bad_image, cache, image_resize=how)
    train_paths = data['train_paths']
    if train_size != test_size:
      data['train'], _ = read_images(train_paths, 3, train_size, **read_kw)
  else:
    names = _subdirs(os.path.join(root, 'train'))
    c = _check_class(config, len(names), names)
    if layout == 'ovr':
      train_paths = _nonempty(list_images(os.path.join(root, 'train', names[c])), os.path.join(root, 'train', names[c]))
      test_paths, labels = [], []
      for k, nm in enumerate(_subdirs(os.path.join(root, 'test'))):
        ps = _nonempty(list_images(os.path.join(root, 'test', nm)), os.path.join(root, 'test', nm))
        test_paths += ps
        labels += [0 if nm == names[c] else 1] * len(ps)
    else:
      base = os.path.join(root, 'train', names[c], 'normal')
      train_paths = _nonempty(list_images(base), base)
      test_paths, labels = [], []
      for sub, lab in (('normal', 0), ('anomalous', 1)):
        folder = os.path.join(root, 'test', names[c], sub)
        ps = list_images(folder) if os.path.isdir(folder) else []
        test_paths += ps
        labels += [lab] * len(ps)
      _nonempty(test_paths, os.path.join(root, 'test', names[c]))
    train, train_paths = read_images(train_paths, 3, train_size, **read_kw)
    test, kept = read_images(test_paths, 3, test_size, **read_kw)
    idx = {p: i for i, p in enumerate(test_paths)}
    labels = np.asarray(labels)[[idx[p] for p in kept]]
    data = dict(train=train, test=test, labels=labels, masks=None, masks_orig=None)
    maps_root = os.path.join(root, 'test_maps')
    if has_maps:  # the reference's -gtms trees (spec §5.9)
      data['masks_orig'] = _reference_maps(root, maps_root, kept, labels)
      data['masks'] = np.stack([ip.resize_u8(m[..., None], test_size, nearest=True)[..., 0]
                                for m in data['masks_orig']])
  nominal_paths = list(train_paths)
  # the second copy of the 'mvtec' geometry's resize branch: originals straight to the input size
  train_input = None
  if pre == 'aug1' and has_maps:
    train_input, _ = read_images(nominal_paths, 3, inp, **read_kw)
  # spec §5.9: mean/std over the nominal training images of the class squashed to 224 (bilinear)
  if how == 'bilinear':
    small = data['train']
  else:
    small, _ = read_images(nominal_paths, 3, inp, nearest=False, shorter=False, on_bad=d.on_bad_image, cache=cache)
  mean, std = ip.channel_stats(small)
  del small
  sizes = _original_sizes(nominal_paths)
  if d.supervise_mode == 'other':   # spec §5.9: nominal + as many labelled anomalies, drawn with replacement
    if layout == 'ovr':
      anom_paths = [p for k, nm in enumerate(names) if k != c
                    for p in list_images(os.path.join(root, 'train', nm))]
    else:
      folder = os.path.join(root, 'train', names[c], 'anomalous')
      anom_paths = list_images(folder) if os.path.isdir(folder) else []
    if not anom_paths:
      raise ValueError(f'config.data.supervise_mode=other needs labelled training anomalies: '
                       + ('images of other classes in train/' if layout == 'ovr' else
                          f'{os.path.join(root, "train", names[c], "anomalous")}/ holds none'))
    anom, anom_paths = read_images(anom_paths, 3, train_size, **read_kw)
    n = len(data['train'])
    pick = np.random.default_rng([config.seed, 0x07E]).integers(0, len(anom), n)
    train_labels = np.concatenate([np.zeros(n, np.int32), np.ones(n, np.int32)])
    data['train'] = np.concatenate([data['train'], anom[pick]])
    if train_input is not None:
      anom_input, _ = read_images(anom_paths, 3, inp, **read_kw)
      train_input = np.concatenate([train_input, anom_input[pick]])
    sizes = None   # fixed labels: nothing is generated
  has_masks = data['masks'] is not None
  if pre == 'aug1':
    t = ip.Transform(mean=mean, std=std, input_size=inp, raw_size=test_size, channels=3,
                     train_geom='mvtec' if has_maps else 'crop', test_center=not has_maps, hflip=True,
                     noise_std=0.001, jitter=(0.01, 0.01, 0.01, 0.01), resize=how)
  else:
    t = ip.Transform(mean=mean, std=std, input_size=inp, raw_size=inp, channels=3, train_geom='none',
                     hflip=False, noise_std=0.0, resize=how)
  info = _info(config, 'custom', inp + (3,), names, c, len(data['train']), has_maps, has_masks, len(data['test']), t)
  masks_orig = None
  if has_masks:  # spec §5.9: each map nearest-resized to the smallest side among them
    side = min(min(m.shape) for m in data['masks_orig'])
    masks_orig = [evaluation.resize_nearest(m, (side, side)) for m in data['masks_orig']]
  # size_scale 1: the reference's confetti sizes are pixels at the resolution it draws at (the original for
  # malformed_normal, the 248 raw size for pure noise images)
  return ip.Pipeline(config, info, data['train'], data['test'], data['labels'], data['masks'], t, pi, pc,
                     test_masks_original=masks_orig, size_scale=1.0,
                     oe_images=_oe_images(config, 3, train_size, cache), train_labels=train_labels,
                     train_images_input=train_input, train_original_sizes=sizes, train_resize=how)


def _mvtec(config, pi, pc):
  d = config.data
  names = constants.MVTEC_CLASSES
  c = _check_class(config, len(names), names)
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
    from fcdd_jax.data import mvtec_tfds  # pylint: disable=g-import-not-at-top
    out = mvtec_tfds.load_category(d.root, names[c], d.tfds_data_dir)
    tr, te = out['train'], out['test']
    data = dict(train=np.stack([evaluation.resize_nearest(x, raw) for x in tr[0]]),
                test=np.stack([evaluation.resize_nearest(x, raw) for x in te[0]]), labels=te[1],
                masks=np.stack([evaluation.resize_nearest(m, raw) for m in te[2]]), masks_orig=te[2],
                defects=te[3])
  else:
    data = mvtec_layout(root, 3, raw, d.on_bad_image, _cache_dir(config, d.root), torch_nearest=True)
  mn, mx, mean, std = constants.MVTEC[c]
  if d.preproc in ('lcnaug1',):
    t = ip.Transform(kind='lcn', lcn_min=mn, lcn_max=mx, input_size=inp, raw_size=raw, channels=3,
                     train_geom='mvtec', hflip=False, noise_std=0.0, mvtec_noise=True, resize='nearest',
                     jitter=MVTEC_JITTER)
  elif d.preproc == 'aug1':
    t = ip.Transform(mean=mean, std=std, input_size=inp, raw_size=raw, channels=3, train_geom='mvtec',
                     hflip=False, noise_std=0.0, mvtec_noise=True, resize='nearest', jitter=MVTEC_JITTER)
  else:
    raise ValueError(f'config.data.preproc={d.preproc!r} is not available for mvtec (raw 240); allowed: lcnaug1, aug1')
  has_masks = data['masks'] is not None
  oe_images, oe_masks = _true_anomalies(config, data)
  if oe_images is None:
    oe_images = _oe_images(config, 3, raw)
  info = _info(config, 'mvtec', inp + (3,), names, c, len(data['train']), True, has_masks, len(data['test']), t)
  return ip.Pipeline(config, info, data['train'], data['test'], data['labels'], data['masks'], t, pi, pc,
                     test_masks_original=data['masks_orig'], size_scale=1.0, oe_images=oe_images,
                     oe_masks=oe_masks)


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
  rng = np.random.default_rng([config.seed, 0x6E7])
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


def read_idx(path):
  """Reads an idx file (optionally .gz): uint8 arrays of the official MNIST/Fashion-MNIST format."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
    raise ValueError(f'{path} is not an idx file of unsigned bytes')
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if arr.size != int(np.prod(shape)):
    raise ValueError(f'{path}: header says {shape} but holds {arr.size} values (truncated?)')
  return arr.reshape(shape)


def _find(root, stem):
  for ext in ('', '.gz'):
    p = os.path.join(root, stem + ext)
    if os.path.exists(p):
      return p
  raise FileNotFoundError(f'{os.path.join(root, stem)}(.gz) not found: Fashion-MNIST needs the four idx files '
                          '(Debian: apt-get install dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist)')


def _tfds_arrays(name, config):
  """train/test uint8 arrays of a tfds image-classification dataset (downloads on first use)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  kw = {'data_dir': config.data.tfds_data_dir} if config.data.tfds_data_dir else {}
  out = {}
  for split in ('train', 'test'):
    ds = tfds.load(name, split=split, **kw).batch(1024)
    xs, ys = [], []
    for b in tfds.as_numpy(ds):
      xs.append(np.asarray(b['image'], np.uint8))
      ys.append(np.asarray(b['label'], np.int64))
    out[split] = (np.concatenate(xs), np.concatenate(ys))
  return out


def _one_vs_rest(config, name, pi, pc, tr_x, tr_y, te_x, te_y, names, table, channels, size):
  c = _check_class(config, len(names), names)
  d = config.data
  train, train_labels = tr_x[tr_y == c], None
  if d.supervise_mode == 'other' and not d.online_supervision:  # spec §6.1: the whole (imbalanced) train set
    train, train_labels = tr_x, (tr_y != c).astype(np.int32)
  labels = (te_y != c).astype(np.int32)
  mn, mx, mean, std = table[c]
  pre = d.preproc
  geo = dict(input_size=size, raw_size=size, channels=channels)
  if pre == 'lcnaug1':
    t = ip.Transform(kind='lcn', lcn_min=mn, lcn_max=mx, train_geom='crop_pad', crop_pad=2, hflip=True,
                     noise_std=0.0, **geo)
  elif pre == 'lcn':
    t = ip.Transform(kind='lcn', lcn_min=mn, lcn_max=mx, train_geom='none', hflip=False, noise_std=0.0, **geo)
  elif pre in ('aug1', 'aug1_blackcenter', 'aug1_blackcenter_inverted'):
    if name == 'fmnist' and pre != 'aug1':
      raise ValueError(f'config.data.preproc={pre!r} is only for cifar10; fmnist allows lcnaug1, lcn, aug1, none')
    t = ip.Transform(mean=mean, std=std, train_geom='crop_pad', crop_pad=3 if name == 'fmnist' else 4, hflip=True,
                     noise_std=0.01 if name == 'fmnist' else 0.001,
                     jitter=(0.1,) * 4 if name == 'fmnist' else (0.01,) * 4,
                     blackcenter={'aug1_blackcenter': 'center', 'aug1_blackcenter_inverted': 'border'}.get(pre, ''),
                     **geo)
  elif pre == 'none':
    t = ip.Transform(mean=mean, std=std, train_geom='none', hflip=False, noise_std=0.0, **geo)
  else:
    raise ValueError(f'config.data.preproc={pre!r} is unknown; allowed: lcnaug1, lcn, aug1, none'
                     + (', aug1_blackcenter, aug1_blackcenter_inverted' if name == 'cifar10' else ''))
  # Online malformed_normal on FMNIST/CIFAR drops the generated map (spec §3.2): label loss.
  info = _info(config, name, tuple(size) + (channels,), names, c, len(train), False, False, len(te_x), t)
  return ip.Pipeline(config, info, train, te_x, labels, None, t, pi, pc, size_scale=size[0] / 240.0,
                     oe_images=_oe_images(config, channels, size), train_labels=train_labels)


def _fmnist(config, pi, pc):
  root = config.data.root or (FMNIST_DEFAULT_ROOT if os.path.isdir(FMNIST_DEFAULT_ROOT) else '')
  if root:
    tr_x = read_idx(_find(root, 'train-images-idx3-ubyte'))
    tr_y = read_idx(_find(root, 'train-labels-idx1-ubyte')).astype(np.int64)
    te_x = read_idx(_find(root, 't10k-images-idx3-ubyte'))
    te_y = read_idx(_find(root, 't10k-labels-idx1-ubyte')).astype(np.int64)
    tr_x, te_x = tr_x[..., None], te_x[..., None]
  else:
    arrays = _tfds_arrays('fashion_mnist', config)
    (tr_x, tr_y), (te_x, te_y) = arrays['train'], arrays['test']
  return _one_vs_rest(config, 'fmnist', pi, pc, tr_x, tr_y, te_x, te_y, constants.FMNIST_CLASSES,
                      constants.FMNIST, 1, (28, 28))


def _cifar10(config, pi, pc):
  root = config.data.root
  names = constants.CIFAR10_CLASSES
  if root:
    cache = _cache_dir(config, root)
    out = {}
    for split in ('train', 'test'):
      xs, ys = [], []
      for k, nm in enumerate(names):
        folder = os.path.join(root, split, nm)
        if not os.path.isdir(folder):
          raise FileNotFoundError(f'{folder} is missing: CIFAR-10 folders need {split}/<class>/* for the classes '
                                  + ', '.join(names))
        imgs, _ = read_images(_nonempty(list_images(folder), folder), 3, (32, 32), on_bad=config.data.on_bad_image,
                              cache=cache)
        xs.append(imgs)
        ys.append(np.full(len(imgs), k))
      out[split] = (np.concatenate(xs), np.concatenate(ys))
  else:
    out = _tfds_arrays('cifar10', config)
  (tr_x, tr_y), (te_x, te_y) = out['train'], out['test']
  return _one_vs_rest(config, 'cifar10', pi, pc, tr_x, tr_y, te_x, te_y, names, constants.CIFAR10, 3, (32, 32))


def create(config, process_index=0, process_count=1):
  name = config.data.name
  if name == 'imagenet':
    from fcdd_jax.data import imagenet  # pylint: disable=g-import-not-at-top
    return imagenet.create(config, process_index, process_count)
  if name == 'pascal_voc':
    from fcdd_jax.data import voc  # pylint: disable=g-import-not-at-top
    return voc.create(config, process_index, process_count)
  fn = {'custom': _custom, 'mvtec': _mvtec, 'fmnist': _fmnist, 'cifar10': _cifar10}[name]
  return fn(config, process_index, process_count)
