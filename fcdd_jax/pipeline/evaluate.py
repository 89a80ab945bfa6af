"""The one evaluate-and-write of every run driver (a single run, each run of many runs, the final run of a
refinement): test outputs through the compiled `steps.eval_step`, image and pixel AUCs, thresholds and AUPRO
(`evaluate`), then results.json, reports and figures (`write_results`)."""
import time

from absl import logging

from fcdd_jax.evaluation import results as results_lib
from fcdd_jax.pipeline import native_run
from fcdd_jax.utils import memory
from fcdd_jax.utils import progress


def evaluate(config, pipeline, state, eval_fn, data_sharding, is_main, train_heatmaps=True):
  """The evaluation every run driver shares: test outputs, image and pixel AUCs, thresholds/AUPRO (process 0),
  training heatmaps (config.eval.train_heatmaps, when `train_heatmaps`). Returns (outputs, train outputs or
  None, results: AUCs, `runs`, thresholds, `pollution`)."""
  if config.data.get('patch_size', 0):   # patch-trained: whole test images at native resolution, tiled exactly
    return native_run.evaluate(config, pipeline, state, is_main)
  bs = config.eval.batch_size or None
  outputs = results_lib.run_evaluation(state, pipeline, eval_fn, data_sharding, 'test', bs,
                                       keep_images=config.eval.num_figure_samples // 2, verbose=is_main)
  image_auc, pixel_auc = results_lib.compute_metrics(config, pipeline, outputs)
  train_outputs = None
  if train_heatmaps and config.eval.train_heatmaps:  # training heatmaps (spec §8.1): first batch of train images
    train_outputs = results_lib.run_evaluation(state, pipeline, eval_fn, data_sharding, 'train', bs, max_batches=1)
  results = {'image_auc': image_auc, 'pixel_auc': pixel_auc,
             'runs': [{'normal_class': int(pipeline.info.normal_class), 'seed': int(config.seed),
                       'image_auc': image_auc, 'pixel_auc': pixel_auc}]}
  if is_main:
    try:
      results.update(results_lib.thresholds_and_aupro(config, outputs))
    except Exception as e:  # pylint: disable=broad-except  (never lose a finished run over extras)
      logging.exception('thresholds/AUPRO failed: %s', e)
  if pipeline.pollution:   # data.pollution: the known true anomalies in the training set
    results['pollution'] = pipeline.pollution
  return outputs, train_outputs, results


def write_results(workdir, config, pipeline, results, outputs, train_outputs=None):
  """results.json (before figures: a figure problem never loses the numbers), reports and figures, then
  results.json again with the figures' time and the peak memory. Process 0 only."""
  results['peak_rss_bytes'] = memory.peak_rss_bytes()
  results['allocator'] = memory.active_allocator()
  results_lib.write_json(workdir, 'results.json', results)
  t_fig = time.time()
  progress.say('writing figures ...')
  results_lib.write_figures(workdir, config, pipeline, outputs, train_outputs, results=results)
  results['figures_seconds'] = round(time.time() - t_fig, 2)
  results['peak_rss_bytes'] = memory.peak_rss_bytes()
  results_lib.write_json(workdir, 'results.json', results)
