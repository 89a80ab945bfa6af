"""Data folders are read-only to us: decoded-image caches (data/image_io.py) live in the user's cache directory;
unreadable files."""
import os
import stat

import numpy as np
import pytest
from PIL import Image

from fcdd_jax.data import image_io


def _tree(root, n=3, corrupt=()):
  os.makedirs(root, exist_ok=True)
  paths = []
  for i in range(n):
    p = os.path.join(root, f'{i}.png')
    if i in corrupt:
      with open(p, 'wb') as f:
        f.write(b'not a png')
    else:
      Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(p)
    paths.append(p)
  return paths


def _all_files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_cache_defaults_to_xdg_cache_home_keyed_by_absolute_root(tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  root = str(tmp_path / 'data' / 'parts')
  d = image_io.cache_dir(root)
  assert os.path.dirname(d) == str(tmp_path / 'xdg' / 'fcdd_jax') and os.path.basename(d).startswith('parts-')
  other = image_io.cache_dir(str(tmp_path / 'elsewhere' / 'parts'))
  assert other != d                                   # same folder name, other absolute path: another cache
  os.makedirs(tmp_path / 'data')
  monkeypatch.chdir(tmp_path / 'data')
  assert image_io.cache_dir('parts') == d            # relative = absolute
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert image_io.cache_dir(root).startswith(str(tmp_path / 'home' / '.cache' / 'fcdd_jax'))
  assert image_io.cache_dir(root, str(tmp_path / 'mine')).startswith(str(tmp_path / 'mine'))


def test_reading_a_read_only_data_folder_writes_nothing_into_it(tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  root = str(tmp_path / 'data')
  paths = _tree(root)
  before = _all_files(root)
  for p in [root] + paths:
    os.chmod(p, stat.S_IREAD | stat.S_IEXEC)
  try:
    cache = image_io.cache_dir(root)
    arr, kept = image_io.read_images(paths, 3, (4, 4), cache=cache)
    again, _ = image_io.read_images(paths, 3, (4, 4), cache=cache)       # from the cache
  finally:
    for p in [root] + paths:
      os.chmod(p, stat.S_IRWXU)
  assert _all_files(root) == before
  assert arr.shape == (3, 4, 4, 3) and kept == paths
  np.testing.assert_array_equal(again, arr)
  assert [f for f in os.listdir(cache) if f.endswith('.npz')]
  # a changed file (size/mtime) is a new cache entry, not a stale hit
  Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(paths[0])
  os.utime(paths[0], ns=(1, 1))
  fresh, _ = image_io.read_images(paths, 3, (4, 4), cache=cache)
  assert fresh[0].mean() == 200


def test_every_image_unreadable_with_skip_is_one_error_naming_the_folder(tmp_path, capsys):
  folder = str(tmp_path / 'train' / 'good')
  paths = _tree(folder, n=4, corrupt=range(4))
  with pytest.raises(ValueError) as e:
    image_io.read_images(paths, 3, (4, 4), on_bad='skip')
  msg = str(e.value)
  assert msg.startswith(f'none of the 4 images in {folder} can be read') and '\n' not in msg and '0.png' in msg
  assert capsys.readouterr().out.count('warning:') == 4               # each file named once


def test_skip_names_a_few_files_then_counts(tmp_path, capsys):
  paths = _tree(str(tmp_path / 'd'), n=9, corrupt=range(8))
  arr, kept = image_io.read_images(paths, 3, (4, 4), on_bad='skip')
  assert len(arr) == 1 and kept == paths[8:]
  out = capsys.readouterr().out.splitlines()
  assert len(out) == image_io.SKIP_SHOWN + 1 and out[-1].startswith('warning: 8 unreadable images were skipped')


def test_a_cache_hit_names_the_files_as_the_caller_did(tmp_path, monkeypatch):
  """The cache is keyed by absolute paths: the same folder read through a relative path (another working
  directory, another spelling) is a hit, and the kept paths are the caller's own (a skipped file stays out)."""
  root = str(tmp_path / 'data')
  paths = _tree(root, n=4, corrupt=[1])
  cache = str(tmp_path / 'cache')
  os.makedirs(cache)
  arr, kept = image_io.read_images(paths, 3, (4, 4), on_bad='skip', cache=cache)
  assert kept == [paths[0], paths[2], paths[3]]
  monkeypatch.chdir(tmp_path)
  rel = [os.path.relpath(p) for p in paths]
  assert rel[0].startswith('data') and rel != paths
  again, kept_rel = image_io.read_images(rel, 3, (4, 4), on_bad='skip', cache=cache)
  assert kept_rel == [rel[0], rel[2], rel[3]] and len(os.listdir(cache)) == 1   # a hit, named as asked
  np.testing.assert_array_equal(again, arr)
