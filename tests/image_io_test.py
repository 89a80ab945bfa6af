"""Decoding of the image files users have (image_io.load_image / list_images): each format is written to
tmp with PIL, tifffile or a minimal PNG encoder below, and the decoded pixels are compared with NumPy
expectations computed here from the written values."""
import logging
import os
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from fcdd_jax.data import image_io


def write_png(path, arr, palette=None):
  """Minimal PNG encoder (filter 0, one IDAT): 8/16-bit gray, GA, RGB, RGBA; or 8-bit palette indices.

  Written here because Pillow cannot write 16-bit RGB/RGBA/LA PNGs."""
  arr = np.asarray(arr)
  if arr.ndim == 2:
    arr = arr[..., None]
  h, w, c = arr.shape
  depth = 16 if arr.dtype == np.uint16 else 8
  ctype = 3 if palette is not None else {1: 0, 2: 4, 3: 2, 4: 6}[c]
  rows = arr.astype('>u2' if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8).reshape(h, -1)
  data = b''.join(b'\x00' + r.tobytes() for r in rows)

  def chunk(tag, payload):
    return struct.pack('>I', len(payload)) + tag + payload + struct.pack('>I', zlib.crc32(tag + payload))

  out = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, ctype, 0, 0, 0))
  if palette is not None:
    out += chunk(b'PLTE', np.asarray(palette, np.uint8).tobytes())
  out += chunk(b'IDAT', zlib.compress(data)) + chunk(b'IEND', b'')
  with open(path, 'wb') as f:
    f.write(out)


def ramp16(shape):
  """uint16 values 0..65535 over the whole array (both ends included)."""
  n = int(np.prod(shape))
  return np.round(np.linspace(0, 65535, n)).astype(np.uint16).reshape(shape)


def rule16(v):
  """The documented 16-bit rule: round(v * 255 / 65535)."""
  return np.floor(v.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# 8-bit and alpha

def test_8bit_gray_rgb_rgba_la_png(tmp_path):
  rng = np.random.default_rng(0)
  rgba = rng.integers(0, 256, (9, 13, 4), dtype=np.uint8)
  cases = {'l.png': (rgba[..., 0], rgba[..., :1]), 'rgb.png': (rgba[..., :3], rgba[..., :3]),
           'rgba.png': (rgba, rgba[..., :3]), 'la.png': (rgba[..., :2], rgba[..., :1])}
  for name, (arr, want) in cases.items():
    write_png(tmp_path / name, arr)
    got = image_io.load_image(str(tmp_path / name))
    assert got.dtype == np.uint8 and got.shape == want.shape, name
    np.testing.assert_array_equal(got, want, err_msg=name)


def test_bilevel_bmp(tmp_path):
  bits = (np.arange(40).reshape(5, 8) % 3 == 0)
  Image.fromarray(bits).convert('1').save(tmp_path / 'b.bmp')
  got = image_io.load_image(str(tmp_path / 'b.bmp'))
  np.testing.assert_array_equal(got[..., 0], np.where(bits, 255, 0))


# ----------------------------------------------------------------------------------------------------
# 16-bit

def test_16bit_gray_png_ramp_spans_full_range(tmp_path):
  v = ramp16((64, 100))
  write_png(tmp_path / 'g16.png', v)
  got = image_io.load_image(str(tmp_path / 'g16.png'))
  assert got.shape == (64, 100, 1) and got.dtype == np.uint8
  np.testing.assert_array_equal(got[..., 0], rule16(v))
  assert got.min() == 0 and got.max() == 255 and got.std() > 50   # not clipped to 255, not constant
  assert len(np.unique(got)) == 256


@pytest.mark.parametrize('byteorder', ['<', '>'])
def test_16bit_gray_tiff_both_byte_orders(tmp_path, byteorder):
  v = ramp16((40, 50))
  tifffile.imwrite(tmp_path / 'g16.tif', v, byteorder=byteorder)
  with Image.open(tmp_path / 'g16.tif') as im:     # the file really is a 16-bit mode for Pillow
    assert im.mode.startswith('I;16')
  got = image_io.load_image(str(tmp_path / 'g16.tif'))
  np.testing.assert_array_equal(got[..., 0], rule16(v))


def test_16bit_gray_png_written_by_pillow(tmp_path):
  v = ramp16((20, 30))
  Image.fromarray(v).save(tmp_path / 'g.png')
  np.testing.assert_array_equal(image_io.load_image(str(tmp_path / 'g.png'))[..., 0], rule16(v))


@pytest.mark.parametrize('channels', [3, 4])
def test_16bit_rgb_and_rgba_png_and_tiff_keep_the_high_byte(tmp_path, channels):
  v = ramp16((30, 40, channels))
  write_png(tmp_path / 'c16.png', v)
  tifffile.imwrite(tmp_path / 'c16.tif', v, photometric='rgb')
  want = (v[..., :3] >> 8).astype(np.uint8)   # Pillow's 16 -> 8 bit decoding of colour images
  for name in ('c16.png', 'c16.tif'):
    got = image_io.load_image(str(tmp_path / name))
    assert got.shape == (30, 40, 3), name
    np.testing.assert_array_equal(got, want, err_msg=name)
    assert np.abs(got.astype(int) - rule16(v[..., :3]).astype(int)).max() <= 1   # documented: at most 1 level
    assert got.min() == 0 and got.max() == 255


def test_16bit_gray_alpha_png(tmp_path):
  v = ramp16((10, 12, 2))
  write_png(tmp_path / 'la16.png', v)
  got = image_io.load_image(str(tmp_path / 'la16.png'))
  want = (v[..., 0] >> 8).astype(np.uint8)
  assert got.shape[-1] in (1, 3)
  for c in range(got.shape[-1]):
    np.testing.assert_array_equal(got[..., c], want)


# ----------------------------------------------------------------------------------------------------
# 32-bit

def test_32bit_integer_tiff_is_read_as_16bit_samples(tmp_path):
  v = np.array([[0, 257, 65535, 70000], [-5, 128 * 257, 1000, 65534]], np.int32)
  tifffile.imwrite(tmp_path / 'i32.tif', v)
  got = image_io.load_image(str(tmp_path / 'i32.tif'))[..., 0]
  np.testing.assert_array_equal(got, rule16(np.clip(v, 0, 65535)))


def test_float_tiff_unit_range_is_scaled_and_other_ranges_clipped(tmp_path):
  unit = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
  tifffile.imwrite(tmp_path / 'f01.tif', unit)
  got = image_io.load_image(str(tmp_path / 'f01.tif'))[..., 0]
  np.testing.assert_array_equal(got, np.floor(unit.astype(np.float64) * 255 + 0.5).astype(np.uint8))
  assert got.max() == 255
  wide = np.array([[-3.0, 0.4, 2.6, 254.5], [300.0, np.nan, 17.0, 1.0]], np.float32)
  tifffile.imwrite(tmp_path / 'fwide.tif', wide)
  got = image_io.load_image(str(tmp_path / 'fwide.tif'))[..., 0]
  np.testing.assert_array_equal(got, [[0, 0, 3, 254], [255, 0, 17, 1]])


# ----------------------------------------------------------------------------------------------------
# Palette, CMYK, other formats

def test_palette_png_maps_indices_to_palette_colours(tmp_path):
  pal = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30], [200, 200, 0]], np.uint8)
  idx = (np.arange(35).reshape(5, 7) % 4).astype(np.uint8)
  write_png(tmp_path / 'p.png', idx, palette=pal)
  got = image_io.load_image(str(tmp_path / 'p.png'))
  np.testing.assert_array_equal(got, pal[idx])
  # Pillow's own palette writer, with a transparent entry (alpha dropped: the colour is kept)
  im = Image.fromarray(idx, 'P')
  im.putpalette(pal.reshape(-1).tolist())
  im.save(tmp_path / 'pt.png', transparency=1)
  np.testing.assert_array_equal(image_io.load_image(str(tmp_path / 'pt.png')), pal[idx])


def test_palette_with_alpha_pa(tmp_path):
  pal = np.array([[1, 2, 3], [250, 100, 50]], np.uint8)
  idx = np.array([[0, 1], [1, 0]], np.uint8)
  im = Image.fromarray(idx, 'P')
  im.putpalette(pal.reshape(-1).tolist())
  im.convert('PA').save(tmp_path / 'pa.tif')
  with Image.open(tmp_path / 'pa.tif') as back:
    assert back.mode == 'PA'
  np.testing.assert_array_equal(image_io.load_image(str(tmp_path / 'pa.tif')), pal[idx])


def test_cmyk_jpeg_gives_plausible_rgb(tmp_path):
  # four flat patches: cyan, magenta, yellow, black ink
  patches = [(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255)]
  cmyk = np.concatenate([np.tile(np.array(p, np.uint8), (16, 16, 1)) for p in patches], axis=1)
  Image.fromarray(cmyk, 'CMYK').save(tmp_path / 'c.jpg', quality=95)
  with Image.open(tmp_path / 'c.jpg') as im:
    assert im.mode == 'CMYK'
  got = image_io.load_image(str(tmp_path / 'c.jpg')).astype(int)
  assert got.shape == (16, 64, 3)
  centres = [got[8, 8 + 16 * k] for k in range(4)]
  want = [(0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 0)]   # RGB = 255 - ink, black -> 0
  for c, w in zip(centres, want):
    assert np.abs(c - np.array(w)).max() <= 12, (c, w)


def test_webp_lossless_and_ppm(tmp_path):
  rgb = np.random.default_rng(3).integers(0, 256, (8, 11, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'x.webp', lossless=True)
  Image.fromarray(rgb).save(tmp_path / 'x.ppm')
  for name in ('x.webp', 'x.ppm'):
    np.testing.assert_array_equal(image_io.load_image(str(tmp_path / name)), rgb, err_msg=name)


def test_unreadable_file_is_named(tmp_path):
  (tmp_path / 'bad.png').write_bytes(b'not a png')
  with pytest.raises(ValueError, match='bad.png'):
    image_io.load_image(str(tmp_path / 'bad.png'))


def test_read_images_of_a_16bit_folder_is_not_constant(tmp_path):
  for k in range(3):
    write_png(tmp_path / f'{k}.png', ramp16((16, 16)) // (k + 1))
  arr, kept = image_io.read_images(image_io.list_images(str(tmp_path)), 3, (16, 16))
  assert arr.shape == (3, 16, 16, 3) and len(kept) == 3
  assert all(a.std() > 10 for a in arr)


# ----------------------------------------------------------------------------------------------------
# Listing

def test_list_images_names_unsupported_files_in_one_line(tmp_path, caplog):
  rgb = np.zeros((4, 4, 3), np.uint8)
  (tmp_path / 'sub').mkdir()
  (tmp_path / '.hidden').mkdir()
  for name in ('a.png', 'B.JPG', 'sub/c.tif', '.hidden/d.png', '._e.png'):
    Image.fromarray(rgb).save(tmp_path / name, format='PNG' if name.endswith('png') else None)
  Image.fromarray(rgb).save(tmp_path / 'anim.gif')
  (tmp_path / 'notes.txt').write_text('x')
  with caplog.at_level(logging.WARNING):
    got = image_io.list_images(str(tmp_path))
  assert [p[len(str(tmp_path)) + 1:] for p in got] == ['B.JPG', 'a.png', 'sub/c.tif']
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1 and '\n' not in lines[0]
  assert 'anim.gif' in lines[0] and 'notes.txt' in lines[0] and 'skipped 2 files' in lines[0]
  assert '.hidden' not in lines[0] and '._e.png' not in lines[0]


def test_list_images_follows_symlinked_folders_once(tmp_path):
  """An OE or training folder assembled from links to other folders lists their images; a link back up the
  tree and a second link to the same folder add nothing."""
  for d in ('a', 'b'):
    (tmp_path / d).mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / d / f'{d}.png')
  top = tmp_path / 'top'
  top.mkdir()
  os.symlink(tmp_path / 'a', top / 'link_a')
  os.symlink(tmp_path / 'b', top / 'link_b')
  os.symlink(tmp_path / 'b', top / 'link_b2')   # the same folder again
  os.symlink(top, tmp_path / 'a' / 'up')        # a cycle: a/up -> top -> link_a -> a
  got = [os.path.relpath(p, top) for p in image_io.list_images(str(top))]
  assert got == ['link_a/a.png', 'link_b/b.png']


def test_list_images_quiet_when_everything_is_an_image(tmp_path, caplog):
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / 'a.png')
  with caplog.at_level(logging.WARNING):
    assert len(image_io.list_images(str(tmp_path))) == 1
  assert not caplog.records


def test_list_images_shortens_long_lists(tmp_path, caplog):
  for k in range(8):
    (tmp_path / f'f{k}.gif').write_bytes(b'GIF89a')
  with caplog.at_level(logging.WARNING):
    assert image_io.list_images(str(tmp_path)) == []
  (msg,) = [r.getMessage() for r in caplog.records]
  assert 'skipped 8 files' in msg and 'f4.gif' in msg and 'f5.gif' not in msg and msg.endswith('...')


@pytest.mark.parametrize('shape', [(5, 7), (6, 4, 3)])
def test_write_png_is_lossless_and_uses_the_fastest_zlib_level(tmp_path, shape):
  """Figures, previews and predict's overlays are written with zlib's fastest level (the stream header's FLEVEL
  field, RFC 1950: 0 = fastest; Pillow's default level 6 writes 2), and read back to the same pixels."""
  arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  path = tmp_path / 'x.png'
  image_io.write_png(arr, path)
  data = path.read_bytes()
  idat = data.index(b'IDAT') + 4
  assert data[idat + 1] >> 6 == 0, data[idat:idat + 2]
  np.testing.assert_array_equal(np.asarray(Image.open(path)), arr)
