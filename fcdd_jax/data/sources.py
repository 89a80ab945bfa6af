"""Compatibility names for callers outside the data layer (fcdd_jax/predict.py, bench/fidelity.py).

The data layer lives in `image_io` (files), `transforms`, one module per dataset and `input_pipeline`. This
module only re-exports the image-file functions those callers use; remove it once they import
`fcdd_jax.data.image_io`.
"""
from fcdd_jax.data import image_io

IMG_EXT = image_io.IMG_EXT
list_images = image_io.list_images
load_image = image_io.load_image
default_cache_root = image_io.default_cache_root
