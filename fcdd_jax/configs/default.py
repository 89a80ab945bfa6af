"""Default configuration: declares every field fcdd_jax knows, with its final type.

Experiment configs import this file and override a few fields. Run with
  python -m fcdd_jax.main --config configs/<name>.py --workdir DIR [--config.field=value ...]
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0                      # seed of the init, the data streams and the anomalies (0 <= seed < 2**32)
  c.num_epochs = 1                # passes over the (enlarged) training set
  c.num_train_steps = -1          # > 0 overrides num_epochs * steps_per_epoch
  c.batch_size = 128              # GLOBAL optimiser-step batch (all devices, all hosts)
  c.log_every_steps = 50          # a progress line, TensorBoard scalars and the non-finite check every N steps
  c.checkpoint_every_steps = 500  # orbax checkpoint every N steps (and always at the last step)
  c.keep_checkpoints = 2          # newest checkpoints kept in <workdir>/checkpoints
  c.objective = 'auto'            # auto (from the net family) | fcdd | hsc | ae
  c.runs = ''                     # many runs in one program: 'CLASSESxSEEDS', e.g. '0-9x0-4' (see multirun.py)

  c.data = d = ml_collections.ConfigDict()   # the data, its anomalies and preprocessing (fcdd_jax/data/)
  d.name = 'demo'                 # demo | fmnist | cifar10 | mvtec | custom | imagenet | pascal_voc
  d.root = ''                     # directory with the data ('' = dataset default / tfds)
  d.tfds_data_dir = ''            # tensorflow-datasets data_dir ('' = tfds default)
  d.normal_class = 0              # index of the nominal class
  d.nominal_label = 0             # spec §3.6
  d.supervise_mode = 'noise'      # unsupervised | other | noise | malformed_normal | malformed_normal_gt
  d.noise_mode = 'cifar100'       # confetti | confetti_pm (darkens or brightens) | gaussian | uniform | solid | blob | mixed_blob | cutpaste | cutpaste_scar | cutpaste_mixed | blobpaste | folder | cifar100 | emnist | imagenet | imagenet22k | mvtec | mvtec_gt
  d.oe_root = ''                  # OE folder: folder | imagenet22k synsets | imagenet val <wnid>/ (or its tars) | cifar100 copy
  d.oe_limit = -1                 # number of distinct OE images (-1 = all); per defect type for mvtec(_gt)
  d.generated_maps = False        # malformed_normal_gt: GT-map loss with the generated anomalies' maps on every dataset
  d.gt_min_change = 0             # malformed_normal_gt maps: pixels changed by more than this (uint8 levels; 0 = any, the reference)
                                  # (False: only where the reference's loader keeps maps: masks, offline, CutPaste)
  d.online_supervision = True     # spec §6.3 (False: a fixed balanced set generated once)
  d.exact_half = False            # True: exactly half of each batch is anomalous (spec §11.4 variant)
  d.preproc = 'aug1'              # lcn | lcnaug1 | aug1 | aug1_blackcenter | aug1_blackcenter_inverted | none
  d.orientation = ''              # custom data, training: '' (the preprocessing's own) | flips (+ vertical flips) |
                                  # rot90 (all 8 orientations): for parts that may lie at any orientation
  d.enlarge = 1                   # passes over the training set per epoch (MVTec: 10)
  d.on_bad_image = 'error'        # error | skip (skip: warn and leave the file out)
  d.remove_oe_from_test = False   # mvtec_gt: drop the labelled anomalies from the test set (spec §11.8)
  d.cache_dir = ''                # decoded/resized arrays cache ('' = $XDG_CACHE_HOME/fcdd_jax; never under root)
  d.demo_num_train = 512          # demo data: generated training images
  d.demo_num_test = 256           # demo data: generated test images (half anomalous)
  d.demo_image_size = 32          # demo data: image side in pixels
  d.pollution = 0.0               # share of true anomalies mixed, unlabelled, into the training set (data/pollution.py)
  d.patch_size = 0                # > 0: train on random P x P crops at native resolution, evaluate whole images at
                                  # their own size, tiled exactly (custom MVTec layout; an epoch covers each image's
                                  # area once: ceil(h*w/P²) crops per image; images smaller than P are refused)
  d.scale = 1.0                   # patch_size > 0: every image resized by this fixed factor first (1 = native pixels)

  c.model = m = ml_collections.ConfigDict()   # the net (fcdd_jax/models/nets.py, baselines.py)
  m.name = 'FCDD_CNN32_S'         # net name (models.NAMES): FCDD_* (FCDD), CNN* (HSC), AE* (autoencoder)
  m.pretrained_path = ''          # .npz or .pth of torchvision vgg11_bn (VGG / VGG_F nets)
  m.bias = True                   # bias terms in the convolutions
  m.torch_init = True             # PyTorch default init (spec §1.1)
  m.bn_unbiased_var = True        # running var from the unbiased batch var (spec §11.10)
  m.frozen_bn = 'parity'          # parity | frozen (spec §11.1)
  m.dtype = 'auto'                # auto | float32 | bfloat16 (auto: run.compute_dtype; bf16 on CPUs where it is faster)
  m.precise_bn = False           # after the last step: BatchNorm statistics recomputed on the training images (train.py)
  m.precise_bn_data = 'images'    # what precise_bn recomputes them on: images (nominal training images, test transform) | stream (one epoch of the training stream: augmented, with its generated anomalies)

  c.loss = l = ml_collections.ConfigDict()    # the objective (fcdd_jax/models/losses.py)
  l.gauss_std = 1.2               # σ of the receptive-field upsampling (spec §7.2); <= 0: σ(r)
  l.stable = True                 # stable anomalous term (spec §11.2); False = reference form
  l.single_label_parity = True    # spec §11.3: single-label batch treated as nominal
  l.blur_heatmaps = False         # HSC gradient heatmaps: blur (spec §8.3)

  c.optim = o = ml_collections.ConfigDict()   # optimiser and learning-rate schedule (fcdd_jax/pipeline/run.py)
  o.name = 'sgd'                  # sgd (Nesterov, momentum 0.9) | adam | auto (pretrained nets: sgd, else adam)
  o.lr = 1e-3                     # learning rate
  o.weight_decay = 1e-6           # coupled L2 (spec §7.1)
  o.momentum = 0.9                # sgd: Nesterov momentum
  o.schedule = 'lambda'           # lambda (lr·gamma^epoch) | milestones | constant
  o.gamma = 0.985                 # lambda schedule: lr x gamma^epoch
  o.milestones = (400, 500)       # milestones schedule: epochs at which lr is multiplied by milestone_factor
  o.milestone_factor = 0.1        # milestones schedule: the factor
  o.head_lr_mult = 1.0            # the FCDD nets' last 1x1 conv (`final`) steps this many times as far as the rest

  c.eval = e = ml_collections.ConfigDict()    # evaluation, thresholds and figures (fcdd_jax/evaluation/results.py)
  e.batch_size = 0                # 0 = batch_size
  e.image_score = 'mean'          # mean (spec §3.5: mean of the low-res map) | max | top<p>% of the upsampled map
  e.quantile = 0.97               # heatmap normalisation quantile (figures only)
  e.figure_reference = 'upsampled'  # global figure normalisation from the displayed maps | lowres (spec §8.3)
  e.pixel_auc = True              # pixel AUC where ground-truth maps exist
  e.pixel_auc_resolution = 'original'  # original (spec §8.2) | input (patch mode: masks to the scaled heatmaps)
  e.train_heatmaps = True         # figure of heatmaps of training images (spec §8.1)
  e.threshold_quantile = 0.99     # nominal-only data: threshold = this quantile of nominal scores
  e.num_figure_samples = 20       # test images shown in the heatmap figures

  c.refine = rf = ml_collections.ConfigDict()   # training-data refinement (fcdd_jax/pipeline/refine_run.py)
  rf.rounds = 0                   # 0 = off; else rounds of K models on disjoint subsets dropping suspected anomalies
  rf.subsets = 5                  # K
  rf.drop = 'auto'                # share of the training samples dropped per round ('0.1'), or 'auto'
  return c
