"""Image files: listing, decoding (Pillow) with fixed value rules, decoded-image caches, masks, idx files.

The bottom of the data layer next to `transforms`: datasets and OE sources read files only through these
functions, and prediction lists and decodes new images with the same rules.
"""
import concurrent.futures
import gzip
import hashlib
import logging
import os
import tempfile

import numpy as np

from fcdd_jax.evaluation import metrics as evaluation
from fcdd_jax.utils import progress
from fcdd_jax.data import transforms

# Decoded with Pillow. GIF is left out on purpose (palette-limited, often animated): list_images names it.
IMG_EXT = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pbm', '.pnm')


def list_images(folder, recursive=True):
  """Sorted paths of the image files (extension in IMG_EXT, any case) under `folder`.

  Hidden files and folders (names starting with '.', e.g. .DS_Store, ._x.png, caches) are left out quietly.
  Symlinked folders are followed (a folder assembled from links to others), each real folder once.
  Every other file that is not a supported image (a .gif, .txt, ...) is named in ONE warning line per call
  (count + first five names), so a stray file in a training folder is visible instead of silently ignored.
  """
  out, other, seen = [], [], set()
  for dirpath, dirnames, files in os.walk(folder, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in seen:   # a link back up the tree, or two links to one folder
      dirnames[:] = []
      continue
    seen.add(real)
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


# zlib level 1 instead of Pillow's default 6: 3-4x faster to write (a 1030x2560 heatmap figure 0.25 s instead of
# 0.81 s), 10-20 % larger files, the same pixels. Figures, previews and predict's overlays all write through this.
PNG_COMPRESS_LEVEL = 1


def write_png(arr, path):
  """Writes a uint8 [H,W] or [H,W,3] array (or a PIL image) as a PNG file (lossless, fast compression)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
  img.save(path, format='PNG', compress_level=PNG_COMPRESS_LEVEL)


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


def cache_dir(root, base=''):
  """Directory for decoded-image caches of the data in `root`: `<cache>/<name>-<hash of abs root>`.

  <cache> is `base` (`config.data.cache_dir`), else `default_cache_root()` (a temporary directory if that cannot
  be created). Nothing is ever written under `root`: data folders may be read-only or shared. root='' gives
  <cache> itself."""
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


SKIP_SHOWN = 5   # skipped files named one per line; the rest are counted


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
        if 'kept' in z.files:   # (indices into `paths`: the same files may be named by another relative path)
          return z['images'], [paths[i] for i in z['kept']]
  def decode(p):
    try:
      img = load_image(p)
    except ValueError as e:
      return e
    img = transforms.to_rgb_or_gray(img, channels)
    if size is not None:
      if shorter:
        img = transforms.resize_shorter_crop(img, size[0])
      elif torch_nearest:
        img = evaluation.resize_nearest(img, size)
      else:
        img = transforms.resize_u8(img, size, nearest=nearest)
    return img

  out, kept_index, skipped = [], [], []
  folder = os.path.dirname(os.path.commonprefix([os.path.abspath(p) for p in paths])) if paths else ''
  with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:  # PIL decodes without the GIL
    for i, (p, img) in enumerate(progress.track(zip(paths, pool.map(decode, paths)), f'decoding images in {folder}',
                                                len(paths), 'images')):
      if isinstance(img, ValueError):
        if on_bad == 'skip':
          skipped.append(str(img))
          if len(skipped) <= SKIP_SHOWN:
            print(f'warning: {img} (skipped: data.on_bad_image=skip)', flush=True)
          continue
        raise ValueError(f'{img}; fix or remove it, or set --config.data.on_bad_image=skip') from None
      out.append(img)
      kept_index.append(i)
  if paths and not out:
    folder = os.path.commonpath([os.path.abspath(os.path.dirname(p)) for p in paths])
    raise ValueError(f'none of the {len(paths)} images in {folder} can be read (data.on_bad_image=skip left out '
                     f'every one; the first: {skipped[0] if skipped else "?"})')
  if len(skipped) > SKIP_SHOWN:
    print(f'warning: {len(skipped)} unreadable images were skipped in total (data.on_bad_image=skip)', flush=True)
  if size is None and out and len({o.shape for o in out}) > 1:
    raise ValueError(f'images differ in size ({out[0].shape} vs others) in {os.path.dirname(paths[0])}')
  arr = np.stack(out) if out else np.zeros((0,) + tuple(size or (1, 1)) + (channels,), np.uint8)
  if key:
    tmp = f'{key}.{os.getpid()}.tmp.npz'   # per process: several processes of one host may fill the cache
    try:
      np.savez(tmp, images=arr, kept=np.asarray(kept_index, np.int64))
      os.replace(tmp, key)
    except OSError as e:   # a full or read-only cache costs speed, not the run
      print(f'warning: could not write the image cache {key}: {e.strerror or e}', flush=True)
      if os.path.exists(tmp):
        os.remove(tmp)
  return arr, [paths[i] for i in kept_index]


def read_mask(path):
  """A mask image -> uint8 [H,W] in {0, 1} (any non-zero value of the first channel is 1)."""
  m = load_image(path)[..., 0]
  return (m > 0).astype(np.uint8)


def subdirs(d):
  """Sorted names of the sub-folders of `d`, hidden ones (starting with '.') left out."""
  return sorted(x for x in os.listdir(d) if os.path.isdir(os.path.join(d, x)) and not x.startswith('.'))


def require_images(paths, folder):
  """`paths`, or a ValueError naming `folder` when it holds no image."""
  if not paths:
    raise ValueError(f'no images in {folder} (extensions: {", ".join(IMG_EXT)})')
  return paths


def original_sizes(paths):
  """(h, w) of each image file, from the headers (no decoding)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for p in paths:
    with Image.open(p) as im:
      out.append((im.size[1], im.size[0]))
  return np.asarray(out, np.int64).reshape(-1, 2)


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
