"""Reports beside results.json: ROC curves and loss curves (PNG), roc.json, results.md."""
import json
import os

import numpy as np

from fcdd_jax.evaluation import metrics as evaluation


def _thin(*arrays, max_points=2000):
  n = len(arrays[0])
  if n <= max_points:
    return arrays
  idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
  return tuple(a[idx] for a in arrays)


def _plot_roc(fpr, tpr, auc, title, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.plot(fpr, tpr, label=f'AUC {auc:.4f}')
  ax.plot([0, 1], [0, 1], 'k--', lw=0.5)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.set_title(title)
  ax.legend(loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_reports(workdir, results, outputs, history=None, max_curve_pixels=2_000_000):
  labels = outputs['label'].astype(np.int32)
  if results.get('image_auc') is not None:
    fpr, tpr, thr = evaluation.roc_curve(labels, outputs['score'])
    fpr, tpr, thr = _thin(fpr, tpr, thr)
    with open(os.path.join(workdir, 'roc.json'), 'w') as f:
      json.dump({'fpr': fpr.tolist(), 'tpr': tpr.tolist(),
                 'thresholds': [t if np.isfinite(t) else None for t in thr.tolist()],
                 'auc': results['image_auc']}, f)
    _plot_roc(fpr, tpr, results['image_auc'], 'image-level ROC', os.path.join(workdir, 'roc_curve.png'))
  if results.get('pixel_auc') is not None and 'gtmap' in outputs:
    g = (outputs['gtmap'] > 0.5).reshape(-1)
    h = outputs['heatmap'].reshape(-1)
    if g.size > max_curve_pixels:  # the curve (not the AUC) from a uniform pixel subsample
      sel = np.random.default_rng(0).choice(g.size, max_curve_pixels, replace=False)
      g, h = g[sel], h[sel]
    fpr, tpr, _ = evaluation.roc_curve(g, h)
    fpr, tpr = _thin(fpr, tpr)
    _plot_roc(fpr, tpr, results['pixel_auc'], 'pixel-level ROC', os.path.join(workdir, 'gtmap_roc_curve.png'))
  if history:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    steps = [h['step'] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in ('loss', 'loss_nominal', 'loss_anomalous'):
      ax.plot(steps, [h.get(k, np.nan) for h in history], label=k)
    ax.set_xlabel('step')
    ax.set_yscale('log')
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, 'loss_curves.png'), dpi=100)
    plt.close(fig)
  write_results_md(workdir, results)


def _fmt(v):
  return 'n/a' if v is None else (f'{v:.4f}' if isinstance(v, float) else str(v))


def write_results_md(workdir, results):
  lines = ['# Results', '', '| metric | value |', '|---|---|',
           f'| image AUC | {_fmt(results.get("image_auc"))} |', f'| pixel AUC | {_fmt(results.get("pixel_auc"))} |']
  if 'aupro' in results:
    lines.append(f'| AUPRO (FPR <= 0.3) | {_fmt(results["aupro"])} |')
  for k, v in (results.get('thresholds') or {}).items():
    lines.append(f'| threshold {k} | {_fmt(v)} |')
  for k in ('steps', 'train_seconds', 'eval_seconds'):
    if k in results:
      lines.append(f'| {k} | {_fmt(results[k])} |')
  runs = results.get('runs') or []
  if runs:
    lines += ['', '| normal class | seed | image AUC | pixel AUC |', '|---|---|---|---|']
    lines += [f'| {r["normal_class"]} | {r["seed"]} | {_fmt(r["image_auc"])} | {_fmt(r["pixel_auc"])} |' for r in runs]
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
