"""ds_preview.png (spec §8.3): augmented training samples per label, with their maps."""
import numpy as np


def write_preview(batch, path, per_label=20):
  """Writes up to `per_label` real rows of each label of a training batch (min-max scaled per image), each
  followed by a row of their ground-truth maps when the batch has them, as one PNG at `path`."""
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
      ims.append((im * 255).astype(np.uint8))
    rows.append(np.concatenate(ims, 1))
    if 'gtmap' in batch:
      rows.append(np.concatenate([np.repeat((batch['gtmap'][i][..., None] * 255).astype(np.uint8), 3, -1)
                                  for i in sel], 1))
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
  grid = np.concatenate(rows, 0)
  scale = max(1, 256 // grid.shape[0])
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
