"""Fidelity benchmark (issue 13): detection quality on real and masked defect data, trained from scratch.

  python -m bench.fidelity [--seeds 0,1,2] [--epochs 5] [--batch 32] [--net FCDD_CNN224_VGG_NOPT]
                           [--dtype float32|bfloat16] [--sets bottle,bottle_pasted] [--bottle DIR]
                           [--workdir DIR] [--steps N] [--set FIELD=VALUE ...]

`configs/custom.py` as users get it (the authors' custom runner with the heatmap maximum as the image score;
`--set` overrides change it, see bench/README.md "Panel") with FCDD_CNN224_VGG_NOPT
from scratch, global batch 32, on
* `bottle`: the shared MVTec bottle (256², real defects: broken_large/small, contamination; image labels only)
  -> image AUC;
* `bottle_pasted`: a masked set built here from the bottle's nominal images: 149 training images, test = 50
  nominal (test/good + 30 held-out) and 30 held-out images with one synthetic defect pasted in (a patch of
  another bottle, a stain or a scratch; masks kept in ground_truth/) -> image and pixel AUC.
  Written once to <workdir or $XDG_CACHE_HOME/fcdd_jax>/bench_fidelity/, never into the data folder.
--bottle defaults to ../shared/data/mvtec_bottle_256/bottle next to the repository (or $FCDD_SHARED_DATA/
mvtec_bottle_256/bottle); pass it when running from a copy. Run from the command line, the process uses the
allocator `fcdd_jax.main` uses (mimalloc on CPU hosts); all runs share one process, so a run's `peak_rss_gb`
is the process's peak so far (the first run's is its own).
Prints one JSON line per run (AUCs, training img/s, peak RSS) and one per set with image/pixel AUC mean ± std over the seeds. `--set` passes
config overrides (e.g. `--set data.exact_half=True`) to compare variants; `--steps` replaces --epochs (smoke
tests).

Panel mode (issue 24: a recipe is judged on every kind of real defect data, never on one set):

  python -m bench.fidelity --panel --workdir W [--seeds 0,1,2] [--sets tire,aitex,elpv,bottle]
                           [--set FIELD=VALUE ...] [--name NAME] [--no_authors] [--table]

trains `configs/custom.py` with the `--set` overrides (the candidate recipe; none = the shipped default) and
the authors' custom recipe (AUTHORS_RECIPE) on every panel set (../shared/data/panel: MVTec 3D-AD tire, AITEX
fabric tiles, ELPV solar cells) plus the bottle, at the fixed budget (FCDD_CNN224_VGG_NOPT from scratch,
batch 32, 5 epochs, the default dtype), seed by seed (all sets for seed 0 first, so a partial run already
compares both recipes everywhere). Every run lives in W/panel/<recipe>/<set>-seed<k>/ and a finished run
(its results.json) is never trained again: rerun the same command to resume after a stop, add seeds or sets
later. It prints one table: per set image AUC, pixel AUC, AUPRO (masked sets) and the border measure (share
of the top 1 % nominal heatmap pixels within 16 and 32 px of the border / that band's share of the area; 1 =
no border bias) as mean ± std over the seeds, candidate next to the authors' recipe, the panel mean, and a
leave-one-set-out check over every recipe in W. `--table` only prints the table of what W holds. A finished
run whose results.json is deleted is evaluated again from its final checkpoint (no training) on the next call.
`--rescore RECIPE --name NEW --set eval.image_score=max` makes an eval-only variant of a trained recipe (its
finished runs' final checkpoints re-evaluated; training is identical, so the variant is that recipe with the
eval flags), e.g. to compare image scores on every set without training again; `--set model.precise_bn=True`
there recomputes the BatchNorm statistics of the final net first (what the flag does after the last step).
"""
import argparse
import ast
import hashlib
import json
import os
import shutil
import statistics
import tempfile

import numpy as np

from bench import common
from bench import position_prior

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOTTLE = os.path.join(os.environ.get('FCDD_SHARED_DATA', os.path.join(os.path.dirname(_REPO), 'shared', 'data')),
                      'mvtec_bottle_256', 'bottle')
PASTED_VERSION = 'bottle_pasted-v2'
_DATA = os.path.dirname(os.path.dirname(BOTTLE))
PANEL = {   # set -> MVTec-layout root (../shared/data/README.md, "panel/")
    'tire': os.path.join(_DATA, 'panel', 'mvtec3d_tire_256', 'mvtec3d_tire'),
    'aitex': os.path.join(_DATA, 'panel', 'aitex_256', 'aitex'),
    'elpv': os.path.join(_DATA, 'panel', 'elpv_mono_256', 'elpv_mono'),
    'bottle': BOTTLE,
}
# The authors' custom runner on the same code (README, parity table).
AUTHORS_RECIPE = ('data.supervise_mode=malformed_normal', 'data.generated_maps=False', 'optim.name=sgd',
                  'model.precise_bn=False', 'eval.image_score=mean')
METRICS = ('image_auc', 'pixel_auc', 'aupro', 'border', 'border32')
LABELS = {'image_auc': 'image AUC', 'pixel_auc': 'pixel AUC', 'aupro': 'AUPRO',
          'border': 'border ratio 16 px (1 = none)', 'border32': 'border ratio 32 px (1 = none)'}


# ----------------------------------------------------------------------------------------------------
# The masked set

def _defect(rng, img, donors):
  """One synthetic defect on uint8 [H,W,3] `img` inside the bottle's central disc: (image, bool mask)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  h, w = img.shape[:2]
  r = rng.uniform(0, 0.33 * min(h, w))
  t = rng.uniform(0, 2 * np.pi)
  cy, cx = h / 2 + r * np.sin(t), w / 2 + r * np.cos(t)
  out = img.astype(np.float64)
  mask_img = Image.new('L', (w, h), 0)
  draw = ImageDraw.Draw(mask_img)
  kind = ('patch', 'stain', 'scratch')[rng.integers(3)]
  if kind == 'patch':     # a square from another bottle image, rotated by a multiple of 90°
    s = int(rng.uniform(0.08, 0.18) * min(h, w))
    donor = donors[rng.integers(len(donors))]
    y0, x0 = rng.integers(0, h - s), rng.integers(0, w - s)
    patch = np.rot90(donor[y0:y0 + s, x0:x0 + s], rng.integers(1, 4)).astype(np.float64)
    ty, tx = int(np.clip(cy - s / 2, 0, h - s)), int(np.clip(cx - s / 2, 0, w - s))
    draw.rectangle([tx, ty, tx + s - 1, ty + s - 1], fill=255)
    mask = np.asarray(mask_img) > 0
    out[ty:ty + s, tx:tx + s] = patch
  elif kind == 'stain':   # an ellipse, darkened or tinted (partly transparent)
    a, b = rng.uniform(0.03, 0.09, 2) * min(h, w)
    draw.ellipse([cx - a, cy - b, cx + a, cy + b], fill=255)
    mask = np.asarray(mask_img) > 0
    if rng.random() < 0.5:
      out[mask] *= rng.uniform(0.45, 0.8)
    else:
      alpha = rng.uniform(0.3, 0.6)
      out[mask] = (1 - alpha) * out[mask] + alpha * rng.integers(0, 256, 3)
  else:                   # a scratch: a polyline of 2-3 segments, 1-4 px wide, darker or brighter than around
    pts = [(cx, cy)]
    for _ in range(rng.integers(2, 4)):
      ang, ln = rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.12) * min(h, w)
      pts.append((pts[-1][0] + ln * np.cos(ang), pts[-1][1] + ln * np.sin(ang)))
    draw.line(pts, fill=255, width=int(rng.integers(1, 5)))
    mask = np.asarray(mask_img) > 0
    out[mask] = out[mask].mean() + rng.choice([-1, 1]) * rng.uniform(50, 110)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def build_pasted(src, base, seed=0):
  """The masked bottle set in MVTec layout under `base` (built once; reused while its version matches)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  train = image_io.list_images(os.path.join(src, 'train', 'good'))
  good = image_io.list_images(os.path.join(src, 'test', 'good'))
  if len(train) < 61 or not good:
    raise ValueError(f'{src} needs >= 61 train/good and some test/good images for the masked set')
  key = hashlib.sha1(repr((PASTED_VERSION, seed, os.path.abspath(src), len(train), len(good))).encode()).hexdigest()
  root = os.path.join(base, f'{PASTED_VERSION}-{key[:10]}')
  os.makedirs(base, exist_ok=True)
  if os.path.exists(os.path.join(root, 'DONE')):
    return root
  tmp = tempfile.mkdtemp(prefix='.building-', dir=base)
  keep, held = train[:-60], train[-60:]
  load = lambda p: np.asarray(Image.open(p).convert('RGB'))
  def save(arr, *parts):
    path = os.path.join(tmp, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image_io.write_png(arr, path)
  for i, p in enumerate(keep):
    save(load(p), 'train', 'good', f'{i:03d}.png')
  for i, p in enumerate(good + held[:30]):
    save(load(p), 'test', 'good', f'{i:03d}.png')
  donors = [load(p) for p in keep[:20]]
  rng = np.random.default_rng(seed)
  for i, p in enumerate(held[30:]):
    img, mask = _defect(rng, load(p), donors)
    save(img, 'test', 'pasted', f'{i:03d}.png')
    save((mask * 255).astype(np.uint8), 'ground_truth', 'pasted', f'{i:03d}_mask.png')
  with open(os.path.join(tmp, 'DONE'), 'w') as f:
    f.write(PASTED_VERSION + '\n')
  try:
    os.rename(tmp, root)
  except OSError:        # built concurrently by another process: keep theirs
    shutil.rmtree(tmp, ignore_errors=True)
  return root


# ----------------------------------------------------------------------------------------------------
# Runs

def apply_override(c, item):
  """Applies one `--set FIELD=VALUE` to config c; a field the config does not have is an error (an unlocked
  ConfigDict would add it silently and the run would ignore it)."""
  field, _, text = item.partition('=')
  node = c
  *path, leaf = field.split('.')
  for p in path:
    if p not in node or not hasattr(node[p], 'keys'):
      raise SystemExit(f'--set {item}: unknown config field {field!r} (no config.{p})')
    node = node[p]
  if leaf not in node:
    raise SystemExit(f'--set {item}: unknown config field {field!r}; see python -m fcdd_jax.main --help')
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  node[leaf] = value


def run_one(root, seed, a, workdir):
  from fcdd_jax.pipeline import train  # pylint: disable=g-import-not-at-top
  c = _config(root, seed, a, workdir)
  for item in a.set:
    apply_override(c, item)
  return train.train_and_evaluate(c, os.path.join(workdir, f'run-{os.path.basename(root)}-seed{seed}'))


# ----------------------------------------------------------------------------------------------------
# Panel mode

def _budget_tag(a):
  budget = f's{a.steps}' if a.steps > 0 else f'e{a.epochs}'
  return f'{a.net}-b{a.batch}-{budget}-{a.dtype}'


def _recipe_key(name, overrides):
  if name:
    return name
  if not overrides:
    return 'default'
  return 'r-' + hashlib.sha1(repr(sorted(overrides)).encode()).hexdigest()[:8]


def _run_metrics(res):
  border = res.get('border') or {}
  return {'image_auc': res.get('image_auc'), 'pixel_auc': res.get('pixel_auc'), 'aupro': res.get('aupro'),
          'border': border.get('ratio'), 'border32': border.get('ratio32')}


def panel_run(a, recipe_dir, overrides, set_name, seed, source_dir=None):
  """One panel run (trained unless its results.json exists): its results, or None where `source_dir` (a
  recipe whose finished runs are re-evaluated with other eval.* settings) has no finished run yet."""
  run_dir = os.path.join(recipe_dir, f'{set_name}-seed{seed}')
  done = os.path.join(run_dir, 'results.json')
  if not os.path.exists(done) and source_dir:
    src = os.path.join(source_dir, f'{set_name}-seed{seed}')
    if not os.path.exists(os.path.join(src, 'results.json')):
      return None
    shutil.copytree(src, run_dir, dirs_exist_ok=True, symlinks=True,
                    ignore=shutil.ignore_patterns('results.json', '*.png', 'overlays', 'events.*'))
  if not os.path.exists(done):
    from fcdd_jax.pipeline import train  # pylint: disable=g-import-not-at-top
    c = _config(PANEL[set_name], seed, a, os.path.dirname(os.path.dirname(recipe_dir)))
    c.checkpoint_every_steps = 1 << 30    # the final checkpoint only (kept: eval-only variants need it)
    for item in overrides:
      apply_override(c, item)
    if source_dir and c.model.precise_bn:
      _precise_bn_in_place(c, run_dir)
    train.train_and_evaluate(c, run_dir)
  with open(done) as f:
    res = json.load(f)
  return res


def _precise_bn_in_place(c, run_dir):
  """A copied finished run given `model.precise_bn` after the fact: its final checkpoint's BatchNorm
  statistics recomputed (steps.precise_bn, as a run does after its last step) and config.json set to `c`, so
  that train_and_evaluate then only evaluates it. Training up to the last step is the same either way."""
  import jax  # pylint: disable=g-import-not-at-top
  from fcdd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from fcdd_jax.utils import checkpointing
  from fcdd_jax.pipeline import run
  from fcdd_jax.pipeline import steps
  from fcdd_jax.utils import workdir
  ckdir = os.path.join(run_dir, 'checkpoints')
  with open(os.path.join(run_dir, 'config.json')) as f:
    if json.load(f)['model'].get('precise_bn'):
      return                                  # done before an interruption
  pipeline = input_pipeline.create(c)
  built = run.build_run(c, pipeline.info, pipeline.info.steps_per_epoch)
  ck = checkpointing.Checkpointer(ckdir, max_to_keep=1, asynchronous=False)
  state, meta, step = ck.restore_latest(built.init_state(jax.random.PRNGKey(0)))
  ck.close()
  if state is None or not meta.get('finished'):
    raise SystemExit(f'{run_dir}: no finished checkpoint to recompute BatchNorm statistics for')
  state = jax.block_until_ready(steps.precise_bn(c, state, pipeline, built))
  tmp = ckdir + '.pbn'
  shutil.rmtree(tmp, ignore_errors=True)
  ck = checkpointing.Checkpointer(tmp, max_to_keep=1, asynchronous=False)
  ck.save(step, state, meta)
  ck.close()
  shutil.rmtree(ckdir)
  os.rename(tmp, ckdir)
  with open(os.path.join(run_dir, 'config.json'), 'w') as f:
    f.write(workdir.config_json(c))


def read_panel(root):
  """{recipe: {'overrides': [...], 'runs': {(set, seed): metrics}}} of every recipe under `root`."""
  out = {}
  for key in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    meta = os.path.join(root, key, 'recipe.json')
    if not os.path.exists(meta):
      continue
    with open(meta) as f:
      rec = {'overrides': json.load(f)['overrides'], 'runs': {}}
    for d in os.listdir(os.path.join(root, key)):
      path = os.path.join(root, key, d, 'results.json')
      set_name, _, seed = d.rpartition('-seed')
      if os.path.exists(path) and set_name in PANEL and seed.isdigit():
        with open(path) as f:
          rec['runs'][(set_name, int(seed))] = _run_metrics(json.load(f))
    out[key] = rec
  return out


def _stats(runs, set_name, metric, seeds):
  return _mean_std([runs[(set_name, s)][metric] for s in seeds if (set_name, s) in runs])


def _quality(runs, set_name, seeds):
  """A set's quality score: the mean of its image AUC, pixel AUC and AUPRO means (those it has)."""
  ms = [_stats(runs, set_name, m, seeds)[0] for m in ('image_auc', 'pixel_auc', 'aupro')]
  ms = [m for m in ms if m is not None]
  return statistics.mean(ms) if ms else None


def panel_table(recipes, sets, seeds, candidate, reference='authors', priors=None):
  """Markdown lines: per set and metric, candidate and reference mean ± std; the panel means; LOSO.
  `priors` {set: bench.position_prior.baselines}: what image-independent maps score on that set's masks."""
  fmt = lambda ms: '–' if ms[0] is None else f'{ms[0]:.3f} ± {ms[1]:.3f}'
  names = [candidate] + ([reference] if reference in recipes and reference != candidate else [])
  lines = [f'| set | metric | ' + ' | '.join(names) + ' |', '|---|---|' + '---|' * len(names)]
  for set_name in sets:
    for m in METRICS:
      cells = [_stats(recipes[n]['runs'], set_name, m, seeds) for n in names]
      if all(c[0] is None for c in cells):
        continue
      n_seeds = [sum((set_name, s) in recipes[n]['runs'] for s in seeds) for n in names]
      label = LABELS[m]
      lines.append(f'| {set_name} | {label} | ' + ' | '.join(
          f'{fmt(c)} (n={k})' for c, k in zip(cells, n_seeds)) + ' |')
    prior = (priors or {}).get(set_name) or {}
    pos = {k: v for k, v in prior.items() if k in ('centre', 'mask_prior') and v}
    if pos:   # a detector's pixel metrics mean something only above these (bench/position_prior.py)
      cell = '; '.join(f"{k} {v['pixel_auc']:.3f} / {v['aupro']:.3f}" for k, v in pos.items())
      lines.append(f'| {set_name} | position only, no image (pixel AUC / AUPRO) | {cell} |' + ' |' * (len(names) - 1))
    dark = prior.get('darkness_border')
    if dark:   # the border ratio of a map that is only the nominal images' darkness
      lines.append(f"| {set_name} | border ratio 16 / 32 px of the images' darkness alone | "
                   f"{dark['ratio']:.2f} / {dark['ratio32']:.2f} |" + ' |' * (len(names) - 1))
  for m in METRICS:
    means = []
    for n in names:
      per_set = [_stats(recipes[n]['runs'], s, m, seeds)[0] for s in sets]
      per_set = [x for x in per_set if x is not None]
      means.append(statistics.mean(per_set) if per_set else None)
    if any(x is not None for x in means):
      label = LABELS[m]
      lines.append(f'| **panel mean** | {label} | ' + ' | '.join(
          '–' if x is None else f'**{x:.3f}**' for x in means) + ' |')
  return lines + [''] + loso_lines(recipes, sets, seeds, reference)


def loso_lines(recipes, sets, seeds, reference='authors'):
  """Leave one set out: the recipe with the best mean quality on the other sets, judged on the one left out
  against the reference (at least as good within one std on each of image AUC, pixel AUC and AUPRO)."""
  if reference not in recipes or len(recipes) < 2 or len(sets) < 2:
    return []
  lines = ['leave-one-set-out (choose on the other sets by mean of image/pixel AUC and AUPRO, judge on the left-out):']
  complete = [n for n, r in recipes.items() if all((s, k) in r['runs'] for s in sets for k in seeds)]
  for out in sets:
    rest = [s for s in sets if s != out]
    scored = [(statistics.mean([_quality(recipes[n]['runs'], s, seeds) or 0.0 for s in rest]), n)
              for n in complete]
    if not scored:
      return lines + ['  (no recipe has every set and seed yet)']
    best = max(scored)[1]
    verdicts = []
    for m in ('image_auc', 'pixel_auc', 'aupro'):
      c, r = _stats(recipes[best]['runs'], out, m, seeds), _stats(recipes[reference]['runs'], out, m, seeds)
      if c[0] is None or r[0] is None:
        continue
      ok = c[0] >= r[0] - max(c[1], r[1])
      verdicts.append(f"{m} {c[0]:.3f} vs {r[0]:.3f} {'ok' if ok else 'WORSE'}")
    lines.append(f'  {out:>7}: chosen {best}: ' + ', '.join(verdicts))
  return lines


def _config(root, seed, a, workdir):
  from bench import train_loop  # pylint: disable=g-import-not-at-top
  c = train_loop.custom_config()
  c.data.root = root
  c.data.cache_dir = os.path.join(workdir, 'cache')
  c.model.name = a.net
  c.model.dtype = a.dtype
  c.batch_size = a.batch
  c.seed = seed
  c.num_epochs = a.epochs
  c.num_train_steps = a.steps if a.steps > 0 else -1
  c.log_every_steps = 10
  c.checkpoint_every_steps = 1 << 30
  c.keep_checkpoints = 1
  c.eval.train_heatmaps = False
  c.eval.num_figure_samples = 0
  return c


def main_panel(a, seeds):
  sets = [s for s in a.sets.split(',') if s] if a.sets != 'bottle,bottle_pasted' else list(PANEL)
  unknown = set(sets) - set(PANEL)
  if unknown:
    raise SystemExit(f'--sets: unknown {sorted(unknown)}; panel sets: {", ".join(PANEL)}')
  missing = [s for s in sets if not os.path.isdir(PANEL[s])]
  if missing:
    raise SystemExit(f'panel data missing: {", ".join(PANEL[s] for s in missing)} (../shared/data/README.md)')
  if not a.workdir:
    raise SystemExit('--panel needs --workdir (runs are kept there and resumed)')
  root = os.path.join(a.workdir, 'panel', _budget_tag(a))
  candidate = _recipe_key(a.name, a.set)
  source_dir = None
  if a.rescore:   # eval-only variant of a trained recipe: same training, other eval.* settings
    bad = [x for x in a.set if not x.startswith(('eval.', 'model.precise_bn_data=')) and x != 'model.precise_bn=True']
    if bad or not a.name:
      raise SystemExit(f'--rescore needs --name and eval.* / model.precise_bn=True / model.precise_bn_data= '
                       f'overrides only '
                       f'(got {bad or "no --name"})')
    source_dir = os.path.join(root, a.rescore)
    with open(os.path.join(source_dir, 'recipe.json')) as f:
      plan = [(candidate, json.load(f)['overrides'] + list(a.set))]
  else:
    plan = [(candidate, list(a.set))] + ([] if a.no_authors or candidate == 'authors'
                                         else [('authors', list(AUTHORS_RECIPE))])
  if not a.table:
    for key, overrides in plan:
      os.makedirs(os.path.join(root, key), exist_ok=True)
      meta = os.path.join(root, key, 'recipe.json')
      if os.path.exists(meta):
        with open(meta) as f:
          old = json.load(f)['overrides']
        if sorted(old) != sorted(overrides):
          raise SystemExit(f'{meta}: recipe {key!r} was run with {old}, not {overrides}: choose another --name')
      else:
        with open(meta, 'w') as f:
          json.dump({'name': key, 'overrides': overrides}, f)
    for seed in seeds:
      for set_name in sets:
        for key, overrides in plan:
          res = panel_run(a, os.path.join(root, key), overrides, set_name, seed, source_dir)
          if res is None:
            print(f'fidelity: {a.rescore} has no finished {set_name} seed {seed} yet: skipped', flush=True)
            continue
          common.emit(impl='fidelity_panel', recipe=key, set=set_name, seed=seed, **_run_metrics(res),
                      img_per_s=res.get('train_images_per_second'),
                      peak_rss_gb=(round(res['peak_rss_bytes'] / 2**30, 2) if res.get('peak_rss_bytes') else None),
                      device_kind=common.cpu_kind(), load=common.load_avg())
  recipes = read_panel(root)
  if candidate not in recipes:
    raise SystemExit(f'no runs of recipe {candidate!r} under {root}')
  priors = {s: position_prior.cached(PANEL[s], os.path.join(a.workdir, 'panel', 'cache')) for s in sets}
  lines = panel_table(recipes, sets, seeds, candidate, priors=priors)
  print(f'\npanel {_budget_tag(a)}, seeds {",".join(map(str, seeds))}, recipe {candidate}: '
        f'{recipes[candidate]["overrides"] or "configs/custom.py as shipped"}')
  print('\n'.join(lines), flush=True)
  return recipes


def _mean_std(xs):
  xs = [x for x in xs if x is not None]
  if not xs:
    return None, None
  return round(statistics.mean(xs), 4), round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--epochs', type=int, default=5)
  p.add_argument('--steps', type=int, default=0, help='> 0: train this many steps instead of --epochs')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--net', default='FCDD_CNN224_VGG_NOPT')
  p.add_argument('--dtype', default=None, choices=['auto', 'float32', 'bfloat16'],
                 help='default: float32; with --panel the config default (auto: bfloat16 for 224² nets on a CPU)')
  p.add_argument('--sets', default='bottle,bottle_pasted')
  p.add_argument('--bottle', default=BOTTLE, help='MVTec-layout bottle folder')
  p.add_argument('--workdir', default='', help='runs and the masked set (default: a temporary directory; the '
                 'masked set then goes to $XDG_CACHE_HOME/fcdd_jax/bench_fidelity)')
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE', help='config override')
  p.add_argument('--panel', action='store_true', help='the panel: tire, aitex, elpv, bottle (module doc)')
  p.add_argument('--name', default='', help='--panel: the candidate recipe\'s name (default: from --set)')
  p.add_argument('--no_authors', action='store_true', help='--panel: do not train the authors\' recipe')
  p.add_argument('--table', action='store_true', help='--panel: only print the table of what --workdir holds')
  p.add_argument('--rescore', default='', metavar='RECIPE',
                 help="--panel: re-evaluate RECIPE's finished runs with the eval.* --set overrides (no training)")
  a = p.parse_args(argv)
  seeds = [int(s) for s in a.seeds.split(',') if s.strip()]
  if a.dtype is None:
    a.dtype = 'auto' if a.panel else 'float32'
  if a.panel:
    return main_panel(a, seeds)
  sets = [s for s in a.sets.split(',') if s]
  unknown = set(sets) - {'bottle', 'bottle_pasted'}
  if unknown:
    p.error(f'--sets: unknown {sorted(unknown)}; allowed: bottle, bottle_pasted')
  if not os.path.isdir(a.bottle):
    p.error(f'--bottle={a.bottle} is not a directory')
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  workdir = a.workdir or tempfile.mkdtemp(prefix='fcdd_fidelity-')
  base = os.path.join(a.workdir or image_io.default_cache_root(), 'bench_fidelity')
  os.makedirs(base, exist_ok=True)
  roots = {'bottle': a.bottle}
  if 'bottle_pasted' in sets:
    roots['bottle_pasted'] = build_pasted(a.bottle, base)
  budget = {'steps': a.steps} if a.steps > 0 else {'epochs': a.epochs}
  summary = []
  try:
    for name in sets:
      res = []
      for seed in seeds:
        r = run_one(roots[name], seed, a, workdir)
        res.append(r)
        common.emit(impl='fidelity', set=name, seed=seed, net=a.net, batch=a.batch, **budget,
                    dtype=a.dtype, image_auc=r['image_auc'], pixel_auc=r['pixel_auc'],
                    train_seconds=r.get('train_seconds'), img_per_s=r.get('train_images_per_second'),
                    peak_rss_gb=(round(r['peak_rss_bytes'] / 2**30, 2) if r.get('peak_rss_bytes') else None),
                    overrides=a.set, device_kind=common.cpu_kind(), load=common.load_avg())
      img, pix = _mean_std([r['image_auc'] for r in res]), _mean_std([r['pixel_auc'] for r in res])
      summary.append(common.emit(impl='fidelity_summary', set=name, seeds=seeds, net=a.net, batch=a.batch,
                                 dtype=a.dtype, **budget, image_auc_mean=img[0], image_auc_std=img[1], pixel_auc_mean=pix[0],
                                 pixel_auc_std=pix[1], overrides=a.set, device_kind=common.cpu_kind()))
  finally:
    if not a.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  for s in summary:
    fmt = lambda m, sd: '-' if m is None else f'{m:.3f} ± {sd:.3f}'
    print(f"{s['set']:>14}: image AUC {fmt(s['image_auc_mean'], s['image_auc_std'])}  "
          f"pixel AUC {fmt(s['pixel_auc_mean'], s['pixel_auc_std'])}  ({len(seeds)} seeds)", flush=True)
  return summary


if __name__ == '__main__':
  from fcdd_jax.utils import memory  # pylint: disable=g-import-not-at-top
  memory.exec_with_allocator('auto')   # as fcdd_jax.main runs (re-executes this command once)
  main()
