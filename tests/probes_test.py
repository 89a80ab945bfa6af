"""Probes of issue 28 for predict and export, each as a user meets it: real processes on a tiny finished run.

Each test failed on 00bac8f: two predicts on one --output both exited 0 and one call's scores were lost; an
export into another export's folder mixed the two; a 1x500 PNG was resized to 248x124,000 and OOM-killed;
read-only outputs and paths under files gave tracebacks (predict only after scoring everything); no progress
line for long single images; an unfinished run exported silently; TF's banner appeared twice."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from fcdd_jax.configs import test as test_config
from fcdd_jax.serving import output_dir
from fcdd_jax.serving import predict_files
from fcdd_jax.serving import predictor as predict
from fcdd_jax import predict as predict_cmd
from fcdd_jax.utils import progress
from fcdd_jax.pipeline import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GB = 1e9

# Runs a command's main() and reports the process's own peak RSS on the last line (KiB): VmHWM of this process
# image (memory.peak_rss_bytes). Not ru_maxrss: a child started by vfork+exec inherits the high-water mark of
# the process it was started from (the pytest worker: 7.9 GB in the full suite).
_PEAK = r'''
import importlib, sys
from fcdd_jax.utils import memory
main = importlib.import_module(sys.argv[1]).main
try:
  rc = main(sys.argv[2:])
finally:
  print(f'PEAK_KB {memory.peak_rss_bytes() // 1024}', flush=True)
sys.exit(rc)
'''


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('run'))
  config = test_config.get_config()
  config.eval.train_heatmaps = False
  train.train_and_evaluate(config, wd)
  return wd


def _env():
  # as a user runs it: one CPU device (the run was trained on conftest's 2 simulated devices; inference restores
  # onto whatever devices it has), no TF logging settings of the test process
  env = {k: v for k, v in os.environ.items() if not k.startswith('TF_CPP') and k != 'XLA_FLAGS'}
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def start(module, *args):
  """A command in its own process (as a user runs it), with its peak RSS reported."""
  return subprocess.Popen([sys.executable, '-c', _PEAK, f'fcdd_jax.{module}', *map(str, args)], env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def finish(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  # the one notice line of a process that compiles the net (which convolutions it uses) is not an error line
  err = '\n'.join(l for l in err.splitlines() if not l.startswith('fcdd_jax: convolutions: '))
  lines = out.strip().splitlines()
  peak = int(lines[-1].split()[1]) * 1024 if lines and lines[-1].startswith('PEAK_KB') else None
  return proc.returncode, '\n'.join(lines[:-1]), err.strip(), peak


def call(module, *args, timeout=600):
  return finish(start(module, *args), timeout)


def images(folder, n, size=(40, 48), seed=0):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for k in range(n):
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(os.path.join(folder, f'{seed}_{k}.png'))
  return str(folder)


def read_rows(path):
  with open(path) as f:
    return f.read().strip().splitlines()[1:]


def siblings(path):
  """Hidden lock/temp entries left next to an output folder."""
  name = os.path.basename(path)
  return [n for n in os.listdir(os.path.dirname(path)) if n.startswith(f'.{name}.')]


# ----------------------------------------------------------------------------------------------------
# 1. predict: one call's complete output per folder

def test_two_concurrent_predicts_on_one_output_never_mix(run, tmp_path):
  a, b = images(tmp_path / 'a', 12, seed=1), images(tmp_path / 'b', 4, seed=2)
  out = str(tmp_path / 'out')
  pa, pb = start('predict', '--workdir', run, '--input', a, '--output', out), \
      start('predict', '--workdir', run, '--input', b, '--output', out)
  (ca, oa, ea, _), (cb, ob, eb, _) = finish(pa), finish(pb)
  assert sorted([ca, cb]) == [0, 4], (ea, eb)
  won, lost_err = (a, eb) if ca == 0 else (b, ea)
  # the loser says why in one line: the winner holds the folder, or (if it already finished) it is taken
  assert len(lost_err.splitlines()) == 1 and lost_err.startswith('fcdd_jax.predict: error: --output')
  assert ('being written by another call' in lost_err) or ('holds an earlier output' in lost_err)
  rows = read_rows(os.path.join(out, 'scores.csv'))
  assert sorted(r.split(',')[0] for r in rows) == sorted(os.path.join(won, n) for n in os.listdir(won))
  assert all(r.split(',')[1] for r in rows)
  assert len([n for n in os.listdir(out) if n.endswith('_overlay.png')]) == len(rows)
  assert siblings(out) == []


def test_second_predict_is_refused_before_scoring_and_overwrite_replaces_whole(run, tmp_path):
  out = str(tmp_path / 'out')
  first = images(tmp_path / 'a', 3, seed=1)
  assert call('predict', '--workdir', run, '--input', first, '--output', out)[0] == 0
  before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
  code, stdout, err, _ = call('predict', '--workdir', run, '--input', images(tmp_path / 'b', 2, seed=2),
                              '--output', out)
  assert code == 4 and err == (f'fcdd_jax.predict: error: --output {out} holds an earlier output (scores.csv); '
                               'pass --overwrite to replace it whole, or choose another --output')
  assert 'using checkpoint' not in stdout   # refused before the run was even loaded
  assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before
  code, _, _, _ = call('predict', '--workdir', run, '--input', str(tmp_path / 'b'), '--output', out, '--overwrite')
  assert code == 0
  assert sorted(os.listdir(out)) == ['2_0_mask.png', '2_0_overlay.png', '2_1_mask.png', '2_1_overlay.png',
                                     'scores.csv']   # the first call's files are gone
  assert len(read_rows(os.path.join(out, 'scores.csv'))) == 2
  assert siblings(out) == []


def test_overwrite_never_deletes_foreign_files(tmp_path):
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('x')
  with pytest.raises(output_dir.OutputError, match=r"holds files that are not an earlier output .*'notes.txt'"):
    with output_dir.staged(str(tmp_path / 'mine'), overwrite=True, marker='scores.csv'):
      pass
  assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'x'


def test_failed_call_leaves_the_earlier_output_untouched(tmp_path):
  out = str(tmp_path / 'out')
  with output_dir.staged(out, marker='scores.csv') as tmp:
    open(os.path.join(tmp, 'scores.csv'), 'w').write('old')
  with pytest.raises(OSError):
    with output_dir.staged(out, overwrite=True, marker='scores.csv') as tmp:
      open(os.path.join(tmp, 'scores.csv'), 'w').write('new, half')
      raise OSError(28, 'No space left on device')
  assert os.listdir(out) == ['scores.csv'] and open(os.path.join(out, 'scores.csv')).read() == 'old'
  assert siblings(out) == []


# ----------------------------------------------------------------------------------------------------
# 2. export: one export per folder

def test_export_into_another_export_is_refused_and_overwrite_replaces_it_whole(run, tmp_path):
  out = str(tmp_path / 'exp')
  assert call('export', '--workdir', run, '--output', out, '--format', 'stablehlo')[0] == 0
  hlo = open(os.path.join(out, 'model.stablehlo'), 'rb').read()
  code, stdout, err, _ = call('export', '--workdir', run, '--output', out, '--format', 'savedmodel')
  assert code == 4 and err.startswith(f'fcdd_jax.export: error: --output {out} holds an earlier output')
  assert len(err.splitlines()) == 1 and 'using checkpoint' not in stdout
  assert sorted(os.listdir(out)) == ['metadata.json', 'model.stablehlo']
  assert open(os.path.join(out, 'model.stablehlo'), 'rb').read() == hlo
  code, _, err, _ = call('export', '--workdir', run, '--output', out, '--format', 'savedmodel', '--overwrite')
  assert code == 0 and err == '', err   # a finished run: no warning, and no TF banner on stderr
  assert sorted(os.listdir(out)) == ['1', 'metadata.json']   # nothing of the earlier export is left
  meta = json.load(open(os.path.join(out, 'metadata.json')))
  assert meta['files'] == {'savedmodel': '1'} and meta['training_finished'] is True
  assert siblings(out) == []


# ----------------------------------------------------------------------------------------------------
# 7. unusable outputs: one line, exit 4, before any work

def _outputs_under_a_file(tmp_path):
  f = tmp_path / 'a_file'
  f.write_text('x')
  return str(f), str(f / 'sub')


@pytest.mark.parametrize('module', ['predict', 'export'])
def test_output_onto_a_file_or_under_a_file(run, tmp_path, module):
  img = images(tmp_path / 'in', 1)
  extra = ['--input', img] if module == 'predict' else []
  file_path, under_file = _outputs_under_a_file(tmp_path)
  code, stdout, err, _ = call(module, '--workdir', run, '--output', file_path, *extra)
  assert (code, err) == (4, f'fcdd_jax.{module}: error: --output {file_path} is an existing file; expected a folder '
                            '(absent, empty, or an earlier output with --overwrite)')
  assert 'using checkpoint' not in stdout
  code, stdout, err, _ = call(module, '--workdir', run, '--output', under_file, *extra)
  assert (code, err) == (4, f'fcdd_jax.{module}: error: --output {under_file}: {file_path} is a file; '
                            'expected a folder path')


def test_read_only_output_is_refused_before_scoring(run, tmp_path):
  """A read-only file system (a tmpfs mounted ro in a private mount namespace: chmod does not stop root)."""
  if shutil.which('unshare') is None:
    pytest.skip('needs unshare(1) for a private read-only mount')
  ro = tmp_path / 'ro'
  ro.mkdir()
  img = images(tmp_path / 'in', 2)
  script = (f'mount -t tmpfs -o ro,size=1m tmpfs {ro} || exit 99; '
            f'{sys.executable} -c "$0" fcdd_jax.predict --workdir {run} --input {img} --output {ro}/preds')
  proc = subprocess.run(['unshare', '-m', 'sh', '-c', script, _PEAK], env=_env(), capture_output=True, text=True,
                        timeout=600)
  if proc.returncode == 99 or 'unshare failed' in proc.stderr:
    pytest.skip(f'no private mounts here: {proc.stderr.strip()[:200]}')
  assert proc.returncode == 4, proc.stderr
  assert proc.stderr.strip() == (f'fcdd_jax.predict: error: --output {ro}/preds: cannot create its parent folder '
                                 f'{ro}: Read-only file system; expected a path inside a writable folder') or \
      proc.stderr.strip() == (f'fcdd_jax.predict: error: --output {ro}/preds: cannot write in {ro} (Read-only file '
                              'system); expected a writable folder')
  assert 'using checkpoint' not in proc.stdout


# ----------------------------------------------------------------------------------------------------
# 3. memory bounded for any width x height (peak RSS of the real process)

def _png(path, h, w):
  y, x = np.mgrid[0:h, 0:w]
  Image.fromarray(np.stack([(x * 7) % 256, (y * 3) % 256, (x + y) % 256], -1).astype(np.uint8)).save(path)
  return str(path)


def test_peak_of_a_command_is_its_own_not_its_parents():
  """The measurement of the memory probes: a command started from a process holding 1 GB reports its own
  peak (before: ru_maxrss, which inherited the pytest worker's 7.9 GB high-water mark in the full suite)."""
  ballast = np.ones(2**30 // 8)
  ballast += 1
  code, _, _, peak = call('summarize', '--help')
  assert code == 0 and peak < 0.5 * GB, peak
  del ballast


def test_thin_and_huge_images_stay_bounded_or_are_refused_before_work(run, tmp_path, capsys):
  thin_tall = tmp_path / 'thin_tall'
  thin_tall.mkdir()
  thin, tall = _png(thin_tall / 'thin.png', 1, 500), _png(thin_tall / 'tall.png', 500, 1)
  big = _png(tmp_path / 'big.png', 3000, 4000)
  for path, hw, scaled in ((thin, (1, 500), (32, 16000)), (tall, (500, 1), (16000, 32))):
    out = tmp_path / f'o{hw[0]}x{hw[1]}'
    # default scaling: the shorter side 1 -> 32 would make the long side 16,000: refused before any work (in
    # this process: the refusal's memory is not the point), nothing written
    code = predict_cmd.main(['--workdir', run, '--input', path, '--output', str(out)])
    stdout, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f'fcdd_jax.predict: error: {path}: {hw[0]}x{hw[1]} pixels, scored at '
                          f'{scaled[0]}x{scaled[1]} (full mode) has a longer side over 8192; use --scale ')
    assert 'scored' not in stdout and not os.path.exists(out)
  # at their own pixels both are scored, in one process within the bound
  code, _, err, peak = call('predict', '--workdir', run, '--input', thin_tall, '--output', tmp_path / 'o1', '--scale', 1)
  assert code == 0 and peak < 3 * GB, err
  assert sorted(n for n in os.listdir(tmp_path / 'o1') if n.endswith('_overlay.png')) == ['tall_overlay.png',
                                                                                         'thin_overlay.png']
  # 4000x3000 at --scale 1: scored within the limit, or refused up front with the --scale that fits
  code, stdout, err, peak = call('predict', '--workdir', run, '--input', big, '--output', tmp_path / 'o4', '--scale', 1)
  assert peak < 3 * GB
  if code == 2:
    assert 'would need about' in err and '--scale 0.' in err and not os.path.exists(tmp_path / 'o4')
    code, _, err, peak = call('predict', '--workdir', run, '--input', big, '--output', tmp_path / 'o4', '--scale',
                              err.split('--scale ')[1].split()[0])
    assert peak < 3 * GB
  assert code == 0, err


@pytest.mark.slow
def test_8192_square_image_stays_under_3gb(run, tmp_path):
  big = _png(tmp_path / 'big.png', 8192, 8192)
  code, stdout, err, peak = call('predict', '--workdir', run, '--input', big, '--output', tmp_path / 'o')
  assert code == 0 and peak < 3 * GB, (err, peak)
  assert 'predict: scoring 1 image(s) at' in stdout   # a progress line before the long single image
  with Image.open(tmp_path / 'o' / 'big_overlay.png') as im:
    assert im.size == (8192, 8192)


def test_program_memory_estimate_bounds_the_compiled_program(run):
  """The linear bytes-per-pixel model is an upper bound of XLA's own memory analysis at a larger size."""
  import jax  # pylint: disable=g-import-not-at-top
  pred = predict.Predictor(run, scale=1.0)
  size = (256, 384)
  shape = pred.padded_size(size)
  x = jax.ShapeDtypeStruct((2,) + shape + (3,), np.float32)
  m = pred._fn.lower(pred.variables, x, pred.keep(size), size).compile().memory_analysis()  # pylint: disable=protected-access
  actual = m.temp_size_in_bytes + m.output_size_in_bytes + x.size * 4
  assert actual <= pred.program_bytes(size, 2) <= 1.5 * actual + 1e6


# ----------------------------------------------------------------------------------------------------
# 10. progress; 11. unfinished export, TF banner, warning style

def test_progress_lines_for_long_scoring(run, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(progress, 'EVERY_SECONDS', 0.0)
  monkeypatch.setattr(predict, 'LARGE_FILE_PIXELS', 100 * 100)
  images(tmp_path / 'in', 2, size=(40, 48))
  _png(tmp_path / 'in' / 'large.png', 200, 120)
  assert predict_cmd.main(['--workdir', run, '--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'o')]) == 0
  out = capsys.readouterr().out
  assert 'fcdd_jax: predict: scoring 1 image(s) at 53x32 pixels (large.png) ...' in out
  assert 'fcdd_jax: predict: scored 3/3 images done in' in out


def test_export_of_unfinished_run_says_so_and_prints_no_tf_banner(run, tmp_path):
  wd = tmp_path / 'unfinished'
  shutil.copytree(run, wd)
  step = max(int(n) for n in os.listdir(wd / 'checkpoints') if n.isdigit())
  meta_file = wd / 'checkpoints' / str(step) / 'meta' / 'metadata'
  meta = json.load(open(meta_file))
  json.dump(dict(meta, finished=False), open(meta_file, 'w'))
  code, stdout, err, _ = call('export', '--workdir', wd, '--output', tmp_path / 'exp')
  assert code == 0
  assert err == (f'fcdd_jax.export: warning: training of {wd} had not finished (checkpoint step {step}); exporting '
                 'it anyway, marked "training_finished": false in metadata.json')   # and nothing else: no banner
  assert json.load(open(tmp_path / 'exp' / 'metadata.json'))['training_finished'] is False
  # (a finished run's export says nothing on stderr: test_export_into_another_export_is_refused_...)


def test_banded_overlay_equals_the_whole_image_overlay():
  """The large-file overlay (bands of rows, no full-size float64 copies) is figures.overlay of local_norm."""
  from fcdd_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (45, 31, 3), dtype=np.uint8)
  heat = (rng.random((45, 31)) * 3 + 0.5).astype(np.float32)
  want = figures.overlay(img, figures.local_norm(heat, 0.97))
  np.testing.assert_array_equal(predict_files.overlay_image(img, heat, None, band=7), want)
  want_t = figures.overlay(img, np.clip(heat / (2 * 1.7), 0, 1))
  np.testing.assert_array_equal(predict_files.overlay_image(img, heat, 1.7, band=4), want_t)


def test_serving_commands_leave_no_log_handler_behind(tmp_path, monkeypatch):
  """A finished predict/export leaves the root logger as it found it (before: a handler bound to the stderr of
  that call, which orbax's background threads later wrote into after it was closed: '--- Logging error ---'
  tracebacks in a later run's output); during the call, warnings are one line on the current stderr."""
  import io  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  from fcdd_jax import export as export_cmd  # pylint: disable=g-import-not-at-top
  from fcdd_jax.serving import messages  # pylint: disable=g-import-not-at-top
  root = logging.getLogger()
  before, level = list(root.handlers), root.level
  assert predict_cmd.main(['--workdir', str(tmp_path), '--input', str(tmp_path / 'none.png'),
                           '--output', str(tmp_path / 'o')]) == 2
  assert export_cmd.main(['--workdir', str(tmp_path), '--output', str(tmp_path / 'e')]) == 2
  assert root.handlers == before and root.level == level
  with messages.one_line_logging('fcdd_jax.predict'):
    monkeypatch.setattr(sys, 'stderr', io.StringIO())
    logging.getLogger('some.library').warning('skipped %d file', 1)
    assert sys.stderr.getvalue() == 'fcdd_jax.predict: warning: skipped 1 file\n'


@pytest.mark.parametrize('module', ['predict', 'export'])
def test_serving_commands_are_absl_with_help_for_every_flag(module, capsys):
  """Issue 26 item 4: one CLI style: `--help` exits 0 and lists every flag with its help text; errors are one
  line (exit 2); predict's --input repeats."""
  import importlib  # pylint: disable=g-import-not-at-top
  cmd = importlib.import_module(f'fcdd_jax.{module}')
  assert cmd.main(['--help']) == 0
  out = capsys.readouterr().out
  fv = cmd.define_flags()
  for name in fv:
    assert f'--{name}:' in out or f'--[no]{name}:' in out, name
    assert fv[name].help, name
  assert cmd.main(['--workdir', 'w']) == 2
  assert capsys.readouterr().err == f'fcdd_jax.{module}: error: --output is required (see --help)\n'
  if module == 'predict':
    fv(['predict', '--workdir', 'w', '--output', 'o', '--input', 'a.png', '--input=b'])
    assert fv.input == ['a.png', 'b']
