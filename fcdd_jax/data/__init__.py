"""The data layer, bottom to top (a module imports only from rows above it; tests/imports_test.py checks it):

  transforms      image ops (colour, resize, ColorJitter, LCN), `Transform`, make_test_transform
  image_io        listing and decoding image files, decoded-image caches, masks, idx files
  streams         the named, disjoint random streams (seed, purpose, index)
  cutpaste        CutPaste / CutPaste-Scar anomalies with their exact pasted regions
  anomalies       synthetic anomalies (noise modes, malformed_normal, ...; dispatches to cutpaste)
  checks          mode names and config checks shared by datasets
  tfds_io         tensorflow-datasets access (filtered loading, decoding, ImageNet-1k class order)
  constants       per-class normalisation constants, class names, ImageNet-30 synsets
  source          `Source`: what every dataset returns
  oe              Outlier Exposure images (folder, cifar100, emnist, imagenet, imagenet22k)
  supervision     offline supervision (a fixed generated set)
  pollution       polluted training sets (true anomalies mixed in, unlabelled)
  demo, custom, mvtec, one_vs_rest, imagenet, voc   one module per dataset: load(config) -> Source
  preview         ds_preview.png of a training batch

`fcdd_jax.input_pipeline` sits on top: the dataset table, `create`, the `Pipeline`, `start_global`.
"""
