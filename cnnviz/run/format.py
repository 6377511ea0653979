"""The run file's schema in one place: every dataset path and attribute name, and the version.

``docs/run-file-format.md`` documents what each holds; writers (:mod:`cnnviz.scanner.assemble`,
:func:`cnnviz.optim.store_in_run`) and readers (:mod:`cnnviz.run.reader`) take their names from
here. Pure constants and numpy: importing it loads neither torch nor h5py.
"""

from __future__ import annotations

import numpy as np

FORMAT = "cnnviz-run"
FORMAT_VERSION = 1

# root datasets
IMAGE_PATH = "images/path"
IMAGE_LABEL = "images/label"
IMAGE_OK = "images/ok"
IMAGE_GEOMETRY = "images/geometry"
IMAGE_IDENTITY = "images/identity"  # since cnnviz 0.2
IMAGE_PATCH_ERROR = "images/patch_error"  # since cnnviz 0.2
FAILURE_ID = "failures/image_id"
FAILURE_PATH = "failures/path"
FAILURE_REASON = "failures/reason"
CLASS_NAMES = "class_names"

# root attributes (JSON strings where noted)
ATTR_FORMAT = "format"
ATTR_VERSION = "format_version"
ATTR_LAYERS = "layers"  # JSON list
ATTR_PREPROCESSING = "preprocessing"  # JSON dict
ATTR_WEIGHTS_SPEC = "weights_spec"  # JSON dict; absent in files written before cnnviz 0.2
ATTR_PRECISION = "precision"  # fp32, tf32 or amp; since cnnviz 0.4 (older files: from `amp`)
ATTR_RANK_BY = "rank_by"  # JSON list of the rankings kept (RANK_BY); since 0.4 (absent: ["max"])
ATTR_RELEVANCE_TARGET = "relevance_target"  # since 0.4, with rank_by relevance: whose logit it is
ATTR_BOTTOM_K = "bottom_k"  # entries of each bottom-k; since 0.4 (absent or 0: none)
ATTR_CNNVIZ_VERSION = "cnnviz_version"
ATTR_CREATED = "created"
ATTR_FINISHED = "finished"
ATTR_SCAN_SECONDS = "scan_seconds"
ATTR_ASSEMBLE_SECONDS = "assemble_seconds"
ATTR_WAIT_DATA_SECONDS = "scan_wait_data_seconds"  # since 0.4
ATTR_WAIT_DISK_SECONDS = "scan_wait_disk_seconds"  # since 0.4
ATTR_MODEL = "model"
ATTR_WEIGHTS_ORIGIN = "weights_origin"
ATTR_WEIGHTS_DIGEST = "weights_digest"  # since 0.2
ATTR_TOP_K = "top_k"
ATTR_BATCH_SIZE = "batch_size"
ATTR_LIBRARY = "library"
ATTR_LIBRARY_ROOT = "library_root"
ATTR_LIBRARY_FINGERPRINT = "library_fingerprint"
ATTR_N_IMAGES = "n_images"
ATTR_N_FAILED = "n_failed"
ATTR_N_PATCH_ERRORS = "n_patch_errors"  # since 0.2
ATTR_MAXIMA_DTYPE = "maxima_dtype"
ATTR_PATCH_SIZE = "patch_size"
ATTR_AMP = "amp"
ATTR_WORLD_SIZE = "world_size"
ATTR_SYNTHETIC = "synthetic"  # written by cnnviz.scanner.synthetic only

# attributes of layers/<name>
LAYER_TYPE = "type"
LAYER_CHANNELS = "channels"
LAYER_HEIGHT = "height"
LAYER_WIDTH = "width"
LAYER_RF_SIZE = "rf_size"
LAYER_RF_STRIDE = "rf_stride"
LAYER_RF_OFFSET = "rf_offset"
LAYER_PATCH_SHAPE = "patch_shape"
LAYER_PATCH_FACTOR = "patch_factor"
LAYER_MAXIMA_KEPT = "maxima_kept"  # since 0.2
LAYER_UNIT = "unit"  # since 0.3 (absent: "map"); "image": one value per image (whole-image unit)
LAYER_LOGITS = "logits"  # since 0.3 (absent: false): the layer's output is the network's output
OPTIMIZED_RECIPE = "recipe"  # attribute of layers/<name>/optimized

# inside layers/<name>/
MAXIMA = "maxima"
POSITION = "position"
MEANS = "means"  # since 0.4: per-image spatial means, beside the maxima (on request)
RELEVANCE = "relevance"  # since 0.4: per-image relevance, beside the maxima (with rank_by relevance)
STATS = "stats"
TOPK = "topk"
TOPK_MEAN = "topk_mean"  # since 0.4: the images ranked by spatial mean, same datasets as topk/
BOTTOMK = "bottomk"  # since 0.4: the most negative images (by spatial minimum), same datasets
TOPK_RELEVANCE = "topk_relevance"  # since 0.4: the images ranked by relevance, same datasets as topk/
RANKING_GROUPS = {"max": TOPK, "mean": TOPK_MEAN, "relevance": TOPK_RELEVANCE, "min": BOTTOMK}
#: the rankings a scan may be asked for, in their order (``min`` is the bottom-k)
RANK_BY = ("max", "mean", "relevance")
# the datasets of each ranking group (topk/, topk_mean/, bottomk/)
ACTIVATION = "activation"
IMAGE_ID = "image_id"
Y = "y"
X = "x"
RF_BOX = "rf_box"
PATCH_BOX = "patch_box"
ORIG_BOX = "orig_box"
PATCHES = "patches"
TOPK_ACTIVATION = "topk/activation"
TOPK_IMAGE_ID = "topk/image_id"
TOPK_Y = "topk/y"
TOPK_X = "topk/x"
TOPK_RF_BOX = "topk/rf_box"
TOPK_PATCH_BOX = "topk/patch_box"
TOPK_ORIG_BOX = "topk/orig_box"
TOPK_PATCHES = "topk/patches"
OPTIMIZED = "optimized"
OPTIMIZED_IMAGES = "optimized/images"
OPTIMIZED_DONE = "optimized/done"
# since 0.4: the distribution over positions (see cnnviz.run.quantiles)
QUANTILES = "quantiles"
QUANTILE_HISTOGRAM = "quantiles/histogram"  # (C, buckets) int64 counts
QUANTILE_VALUE = "quantiles/value"  # (C, levels) float32
# attributes of layers/<name>/quantiles
QUANTILE_LEVELS = "levels"  # the levels of quantiles/value's columns
QUANTILE_POSITIONS = "positions"  # positions counted per image (0: all)
QUANTILE_MASK_LEVEL = "mask_level"  # the level a unit's mask is drawn at (0.995)
QUANTILE_MANTISSA_BITS = "mantissa_bits"  # the bucket scale (cnnviz.run.quantiles.BucketScale)
QUANTILE_MIN_EXPONENT = "min_exponent"
QUANTILE_MAX_EXPONENT = "max_exponent"


def ranking_path(rank_by: str, dataset: str) -> str:
    """``topk/<dataset>`` (``max``), ``topk_mean/<dataset>`` (``mean``) or ``bottomk/<dataset>``
    (``min``: the bottom-k), inside a layer's group."""
    return f"{RANKING_GROUPS[rank_by]}/{dataset}"


def layer_group(name: str) -> str:
    """The group of a scanned layer: ``layers/<tap name>``."""
    return f"layers/{name}"


def position_dtype(height: int, width: int) -> type:
    """Smallest unsigned dtype for a flat position ``y * W + x`` in a ``height x width`` map."""
    return np.uint16 if height * width <= np.iinfo(np.uint16).max else np.uint32
