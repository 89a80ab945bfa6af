"""The predict command's work over files (`python -m fcdd_jax.predict`; its command line is `fcdd_jax/predict.py`,
how an image is scored is `serving/predictor.py`): inputs collected from files and folders, every file checked
against the limits before any scoring (pass 1, `plan`), scored in batches of one scaled size with overlay and
mask PNGs at the file's own size (pass 2, `score_files`), scores.csv, all written into a staged output folder
(`output_dir`) that replaces --output only when complete. Exit codes and one-line errors: `serving/messages`."""
import csv
import os
import time

import numpy as np

from fcdd_jax.data import image_io
from fcdd_jax.serving import messages
from fcdd_jax.serving import output_dir
from fcdd_jax.serving import predictor
from fcdd_jax.utils import progress


def collect(paths):
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  out = []
  for p in paths:
    if os.path.isdir(p):
      out += image_io.list_images(p)
    elif os.path.exists(p):
      out.append(p)
    else:
      raise FileNotFoundError(f'--input {p}: no such file or directory')
  if not out:
    raise FileNotFoundError(f'no images in --input {", ".join(paths)} (supported: {" ".join(image_io.IMG_EXT)})')
  return out


def _stems(files):
  names, seen = {}, {}
  for f in files:
    stem = os.path.splitext(os.path.basename(f))[0]
    seen[stem] = seen.get(stem, 0) + 1
  for f in files:
    stem = os.path.splitext(os.path.basename(f))[0]
    if seen[stem] > 1:
      stem = f'{os.path.basename(os.path.dirname(os.path.abspath(f)))}_{stem}'
    base, k = stem, 1
    while stem in names.values():
      k += 1
      stem = f'{base}_{k}'
    names[f] = stem
  return names


def _file_size(path):
  """(height, width) from the file's header (no decode); ValueError naming the file when unreadable."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return im.size[1], im.size[0]
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many kinds)
    raise ValueError(f'cannot read image {path}: {type(e).__name__}: {e}') from None


def plan(pred, files):
  """Pass 1, before any scoring: {scaled size: [files]} of the readable files (unreadable ones are named on
  stderr and left out); raises predictor.ImageTooLarge for a file that cannot be scored within the limits."""
  groups = {}
  for f in files:
    try:
      hw = _file_size(f)
    except ValueError as e:
      messages.warn(predictor.PROG, str(e))
      continue
    if hw[0] * hw[1] > predictor.MAX_FILE_PIXELS:
      raise predictor.ImageTooLarge(f'{f}: {hw[0]}x{hw[1]} pixels; at most {predictor.MAX_FILE_PIXELS} pixels per file (its heatmap '
                          'and overlay are made at its own size); crop or split the image')
    size = pred.scaled_size(*hw)
    pred.check_fits(size, f, hw)
    groups.setdefault(size, []).append((f, hw))
  return groups


def _chunks(pred, size, group):
  """Batches of one scaled size: at most `batch_rows` images and predictor.MAX_FILE_PIXELS file pixels (1 at least)."""
  rows, chunk, pixels = pred.batch_rows(size), [], 0
  for f, hw in group:
    if chunk and (len(chunk) == rows or pixels + hw[0] * hw[1] > predictor.MAX_FILE_PIXELS):
      yield chunk
      chunk, pixels = [], 0
    chunk.append(f)
    pixels += hw[0] * hw[1]
  if chunk:
    yield chunk


def overlay_image(display, heat, pix_t, band=1024):
  """figures.overlay of the normalised heatmap (pixel threshold: h / 2t; else figures.local_norm at 0.97),
  computed in bands of rows so that a large file needs no float64 copies of its whole size."""
  from fcdd_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
  if pix_t:
    lo, qq = 0.0, 2 * pix_t
  else:   # local_norm's min and 0.97 quantile (its sorted-element rule), without its full-size copies
    lo = float(np.min(heat))
    flat = heat.ravel().copy()
    k = int(0.97 * (flat.size - 1))
    qq = float(np.float64(np.partition(flat, k)[k]) - lo)
    del flat
  out = np.empty(display.shape[:2] + (3,), np.uint8)
  for y in range(0, heat.shape[0], band):
    h = heat[y:y + band].astype(np.float64) - lo
    out[y:y + band] = figures.overlay(display[y:y + band], np.clip(h / qq if qq > 0 else h, 0, 1))
  return out


def write_outputs(pred, out_dir, stem, img, heat, pix_t):
  image_io.write_png(overlay_image(pred.display(img), heat, pix_t), os.path.join(out_dir, f'{stem}_overlay.png'))
  if pix_t:
    image_io.write_png((heat >= pix_t).astype(np.uint8) * np.uint8(255), os.path.join(out_dir, f'{stem}_mask.png'))


def score_files(pred, groups, out_dir, stems, pix_t):
  """Pass 2: scores every planned file, writing overlay (and mask) PNGs into out_dir; {file: score}."""
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  scores = {}
  big = pred.batch_size * pred.size[0] * pred.size[1]   # an evaluation batch's pixels
  prog = progress.Progress('predict: scored', sum(len(g) for g in groups.values()), 'images',
                           every=progress.EVERY_SECONDS)
  for size, group in groups.items():
    for chunk in _chunks(pred, size, group):
      imgs, names = [], []
      for f in chunk:
        try:
          imgs.append(image_io.load_image(f))
          names.append(f)
        except ValueError as e:   # header readable, pixels not (truncated file)
          messages.warn(predictor.PROG, str(e))
          prog.update()
      if not imgs:
        continue
      if len(imgs) * size[0] * size[1] > big or sum(im.shape[0] * im.shape[1] for im in imgs) > predictor.LARGE_FILE_PIXELS:
        progress.say(f'predict: scoring {len(imgs)} image(s) at {size[0]}x{size[1]} pixels '
                     f'({os.path.basename(names[0])}{", ..." if len(names) > 1 else ""}) ...')
      s, maps = pred.predict(imgs)
      for f, im, sc, h in zip(names, imgs, s, maps):
        scores[f] = float(sc)
        write_outputs(pred, out_dir, stems[f], im, h, pix_t)
        prog.update()
  prog.close()
  return scores


def write_scores(path, files, scores, threshold):
  with open(path, 'w', newline='') as fh:
    w = csv.writer(fh)
    w.writerow(['path', 'score', 'anomalous'])
    for f in files:
      sc = scores.get(f)
      anom = '' if (sc is None or threshold is None) else int(sc >= threshold)
      w.writerow([f, '' if sc is None else f'{sc:.6g}', anom])


def run(workdir, inputs, output, *, overwrite=False, threshold=None, mode='full', scale=None, batch_size=16,
        max_memory_gb=predictor.MAX_MEMORY_GB, tile=None):
  """The predict command (module doc; its command line is `fcdd_jax.predict`): scores `inputs` (files or
  folders) with the run in `workdir` into the folder `output`. Returns the exit code; errors are one line."""
  t0 = time.time()
  with messages.one_line_logging(predictor.PROG):
    try:
      files = collect(inputs)
      with output_dir.staged(output, overwrite, marker=predictor.SCORES) as tmp:
        pred = predictor.Predictor(workdir, batch_size, mode=mode, scale=scale, max_memory_gb=max_memory_gb, tile=tile)
        groups = plan(pred, files)
        threshold = threshold if threshold is not None else pred.thresholds.get('image')
        scores = score_files(pred, groups, tmp, _stems(files), pred.thresholds.get('pixel'))
        write_scores(os.path.join(tmp, predictor.SCORES), files, scores, threshold)
    except output_dir.OutputError as e:
      return messages.error(predictor.PROG, e, messages.EXIT_FILE_SYSTEM)
    except (ValueError, FileNotFoundError) as e:
      return messages.error(predictor.PROG, e, messages.EXIT_BAD_INPUT)
    except OSError as e:   # writing the outputs (disk full, ...): nothing of this call is left in --output
      return messages.error(predictor.PROG, messages.os_error_message(e), messages.EXIT_FILE_SYSTEM)
  print(f'scored {len(scores)} of {len(files)} images ({mode} mode) in {time.time() - t0:.1f} s '
        f'-> {os.path.join(output, predictor.SCORES)}'
        + (f' (threshold {threshold:.6g})' if threshold is not None else ' (no threshold)'))
  return messages.EXIT_OK if scores else messages.EXIT_NOTHING_DONE
