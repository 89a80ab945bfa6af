"""Smoke tests of the benchmark modules (tiny sizes; not timed tests)."""
import json
import subprocess
import sys

import pytest

from tests.paths import ROOT
from tests.paths import user_env


def _run(args, timeout=300, **env):
  out = subprocess.run([sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env=user_env(**env))
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith('{')]
  assert lines
  for l in lines:
    assert 'impl' in l and 'device_kind' in l
  return lines


def test_torch_train_step_bench():
  pytest.importorskip('torch', reason='torch not installed')
  rs = _run(['bench.torch_train_step', '--net', 'FCDD_CNN28_W', '--batch', '8', '--steps', '2'])
  assert {r['layout'] for r in rs} == {'nchw', 'channels_last'}


def test_upsample_bench_agrees_with_torch_reference():
  pytest.importorskip('torch', reason='torch not installed')
  rs = _run(['bench.upsample', '--n', '4', '--steps', '2'])
  torch_line = [r for r in rs if r['impl'] == 'torch'][0]
  assert torch_line['max_abs_diff_vs_jax'] < 1e-4


def test_eval_and_pixel_auc_bench():
  _run(['bench.eval', '--net', 'FCDD_CNN28_W', '--batch', '8', '--steps', '1'])
  rs = _run(['bench.pixel_auc', '--sizes', '2e6', '--sklearn_max', '2e6'])
  jax_auc = [r for r in rs if r['impl'] == 'jax'][0]['auc']
  sk_auc = [r for r in rs if r['impl'] == 'sklearn'][0]['auc']
  assert jax_auc == pytest.approx(sk_auc, abs=1e-9)


def test_models_axis_bench():
  rs = _run(['bench.models_axis', '--net', 'FCDD_CNN28', '--batch', '8', '--models', '1,2', '--steps', '1'])
  assert [(r['mode'], r['models']) for r in rs] == [('vmap', 1), ('vmap', 2), ('unroll', 1), ('unroll', 2)]


def test_compare_bench_same_process_ratio():
  pytest.importorskip('torch', reason='torch not installed')
  rs = _run(['bench.compare', '--net', 'FCDD_CNN28_W', '--batch', '8', '--steps', '2',
             '--dtypes', 'float32,bfloat16', '--torch_bf16_steps', '1', '--warmup', '1'])
  steps = {(r['impl'], r.get('dtype') or r.get('layout')) for r in rs if r['impl'] != 'ratio'}
  assert steps == {('jax', 'float32'), ('jax', 'bfloat16'), ('torch', 'nchw'), ('torch', 'channels_last'),
                   ('torch', 'channels_last-autocast-bf16')}
  gflop = 0.491762432  # FCDD_CNN28_W per image: 2*f1 (no input gradient) + 3*f2 + 3*f3, see below
  for r in rs:
    if r['impl'] in ('jax', 'torch'):
      assert r['gflop_per_s'] == pytest.approx(r['img_per_s'] * gflop, rel=0.01, abs=0.1)
      # a difference of RSS readings around the step: other threads freeing memory can make it a hair negative
      assert r['step_mem_mb_per_img'] is None or r['step_mem_mb_per_img'] >= -0.5
      assert (r['temp_mb_per_img'] is not None and r['temp_mb_per_img'] > 0) == (r['impl'] == 'jax')
  (ratio,) = [r for r in rs if r['impl'] == 'ratio']
  best = max(r['img_per_s'] for r in rs if r['impl'] == 'torch' and 'autocast' not in r['layout'])
  assert ratio['best_torch_img_per_s'] == best  # float32 PyTorch only: autocast-bf16 is reported, not a ratio
  jax_bf16 = [r['img_per_s'] for r in rs if r.get('dtype') == 'bfloat16'][0]
  assert ratio['jax_bfloat16_vs_best_torch'] == pytest.approx(jax_bf16 / best, abs=2e-3)
  # like for like: bf16 vs PyTorch autocast-bf16, float32 vs its best float32 layout, default dtype vs its fastest
  torch_bf16 = [r['img_per_s'] for r in rs if r.get('layout') == 'channels_last-autocast-bf16'][0]
  assert ratio['jax_bfloat16_vs_torch_bf16'] == pytest.approx(jax_bf16 / torch_bf16, abs=2e-3)
  assert 'jax_float32_vs_torch_f32' in ratio
  # the default dtype of a small net is bfloat16 where the convolutions ran on oneDNN on a CPU with bf16
  # arithmetic, float32 elsewhere; its ratio is against PyTorch's fastest setting
  from fcdd_jax.models.cpu import onednn  # pylint: disable=g-import-not-at-top
  on_bf16 = ratio['conv_impls'] == ['onednn'] and onednn.native_bf16()
  assert ratio['default_dtype'] == ('bfloat16' if on_bf16 else 'float32')
  fastest = max(r['img_per_s'] for r in rs if r['impl'] == 'torch')
  jax_default = [r['img_per_s'] for r in rs if r.get('dtype') == ratio['default_dtype']][0]
  assert ratio['jax_default_vs_torch_fastest'] == pytest.approx(jax_default / fastest, abs=2e-3)


def test_compare_pretrain_bench_ratio_is_the_default_over_torch_fastest():
  pytest.importorskip('torch', reason='torch not installed')
  rs = _run(['bench.compare_pretrain', '--batch', '4', '--steps', '1'])
  rates = {r['impl']: r['img_per_s'] for r in rs if r['impl'] != 'ratio'}
  assert set(rates) >= {'jax_float32', 'torch_nchw_float32', 'torch_channels_last_float32',
                        'torch_channels_last_autocast-bf16'}
  (ratio,) = [r for r in rs if r['impl'] == 'ratio']
  fastest = max((k for k in rates if k.startswith('torch')), key=rates.get)
  # two PyTorch layouts can run equally fast: the named one must have the top rate, not a given name
  assert rates[ratio['torch_fastest']] == pytest.approx(rates[fastest], rel=1e-3) and ratio['default'] in rates
  assert ratio['default_vs_torch_fastest'] == pytest.approx(rates[ratio['default']] / rates[fastest], rel=2e-3)


def test_train_gflop_per_image_counts_conv_passes():
  from bench import common  # pylint: disable=g-import-not-at-top
  f1 = 2 * 28 * 28 * 25 * 1 * 128       # FCDD_CNN28_W conv 1->128 5x5 at 28x28: forward + weight gradient only
  f2 = 2 * 14 * 14 * 25 * 128 * 128     # conv 128->128 5x5 at 14x14: forward, input and weight gradients
  f3 = 2 * 7 * 7 * 128                  # final 1x1 conv to one channel
  assert common.train_gflop_per_image('FCDD_CNN28_W') == pytest.approx((2 * f1 + 3 * f2 + 3 * f3) / 1e9)
  nopt, vgg_f = common.train_gflop_per_image('FCDD_CNN224_VGG_NOPT'), common.train_gflop_per_image('FCDD_CNN224_VGG_F')
  assert 39 < nopt < 39.5 and vgg_f < 0.6 * nopt   # _F: no gradients below its first trainable conv


def test_gemm_peak_bench():
  pytest.importorskip('torch', reason='torch not installed')
  (r,) = _run(['bench.gemm_peak', '--shapes', '256,128,64', '--steps', '1'])
  assert all(r[f'{i}_gflops'] > 0 for i in ('jax_f32', 'jax_bf16', 'torch_f32', 'torch_bf16'))


def test_jax_train_step_bench_reports_memory_and_remat_option():
  r_on, r_off = (_run(['bench.train_step', '--net', 'FCDD_CNN28_W', '--batch', '8', '--steps', '1', '--remat', v])[0]
                 for v in ('on', 'off'))
  for r in (r_on, r_off):
    assert r['impl'] == 'jax' and r['img_per_s'] > 0 and r['compile_s'] > 0
  assert r_on['remat'] is True and r_off['remat'] is False
  assert 0 < r_on['temp_mb'] < r_off['temp_mb'] and r_on['peak_rss_mb'] > 0


def test_profile_step_groups_the_step_time():
  # XLA's own convolutions (GEMMs): the oneDNN path's custom calls are not XLA ops to group
  rs = _run(['bench.profile_step', '--net', 'FCDD_CNN28_W', '--batch', '8', '--steps', '1', '--top', '3'],
            FCDD_CONV_IMPL='xla')
  (step,) = [r for r in rs if r['what'] == 'step']
  groups = {r['group']: r['share'] for r in rs if r['what'] == 'group'}
  assert step['ms'] > 0 and groups.get('gemm', 0) > 0          # bf16 convs run as GEMMs on CPU
  # the ops account for the step (independent ops may run on both threads at once, and under load an op's
  # wall time includes time descheduled: the sum can pass 1); the bf16 convolutions (GEMMs and their im2col
  # copies) dominate CNN28_W. Which of the two is larger at batch 8 depends on the load (parallel test
  # workers): 0.43 / 0.44 in one run, so only their sum and a real GEMM share are asserted.
  assert sum(groups.values()) > 0.5
  assert groups.get('gemm', 0) > 0.2 and groups['gemm'] + groups.get('im2col / data movement', 0) > 0.5, groups
  assert len([r for r in rs if r['what'] == 'op']) == 3
