"""ds_preview.png (spec §8.3): augmented training samples per label, with their maps; partial anomaly maps
(e.g. CutPaste's exact pasted region) outlined on the anomalous images."""
import numpy as np

from fcdd_jax.data import image_io

OUTLINE_RGB = (255, 0, 0)


def outline(mask):
  """bool [H,W]: the pixels just outside a bool region (8-neighbour dilation minus the region), so the
  outline frames the region without covering it."""
  m = np.asarray(mask, bool)
  p = np.pad(m, 1)
  h, w = m.shape
  grown = np.zeros_like(m)
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      grown |= p[dy:dy + h, dx:dx + w]
  return grown & ~m


def write_preview(batch, path, per_label=20):
  """Writes up to `per_label` real rows of each label of a training batch (min-max scaled per image), each
  followed by a row of their ground-truth maps when the batch has them, as one PNG at `path`. An anomalous
  (label 1) image whose map marks only part of it has that region outlined in OUTLINE_RGB."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  x, y = batch['image'], batch['label']
  real = batch['valid'] > 0 if 'valid' in batch else np.ones(len(y), bool)
  rows = []
  for lab in (0, 1):
    sel = np.flatnonzero((y == lab) & real)[:per_label]
    if not len(sel):
      continue
    ims = []
    for i in sel:
      im = x[i]
      im = (im - im.min()) / max(float(im.max() - im.min()), 1e-8)
      im = np.repeat(im, 3, -1) if im.shape[-1] == 1 else im
      im = (im * 255).astype(np.uint8)
      if lab == 1 and 'gtmap' in batch:
        region = batch['gtmap'][i] > 0.5
        if 0 < region.sum() < region.size:
          im[outline(region)] = OUTLINE_RGB
      ims.append(im)
    rows.append(np.concatenate(ims, 1))
    if 'gtmap' in batch:
      rows.append(np.concatenate([np.repeat((batch['gtmap'][i][..., None] * 255).astype(np.uint8), 3, -1)
                                  for i in sel], 1))
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
  grid = np.concatenate(rows, 0)
  scale = max(1, 256 // grid.shape[0])
  image_io.write_png(Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST), path)
