"""MobileNetV2 (Sandler et al. 2018), from scratch or from local ImageNet weights.

    input     c x c x 3 crop minus the window of the mean image under it, / 127.5
    backbone  keras.applications.MobileNetV2, no top, width 1.0, global average pooling -> 1280
    drop      dropout 0.2
    fc8       num_classes (logits)

The backbone is one nested layer of the model, named "backbone". Its ImageNet weights expect
pixels in [-1, 1] (Keras' preprocess_input for it is x / 127.5 - 1); crops minus their mean
window lie in about [-127.5, 127.5], so / 127.5 gives them that range, centred by the mean
instead of by 127.5.

Weights: `build(..., weights=path)` loads a no-top backbone's weights from a local file, e.g.
Keras' mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 (the legacy HDF5 that
weights="imagenet" would download; matched layer by layer in order) or a backbone's own
save_weights file (.weights.h5). Any crop size works: the weights are convolution kernels and BN
statistics, none depends on the side, and keras.applications only checks (and warns about) the
side for weights="imagenet", which we never pass: nothing is downloaded. A missing file raises
FileNotFoundError (keras.applications would raise a ValueError about `weights`).

The backbone's BN layers keep Keras' momentum 0.999: their moving statistics take about a
thousand steps to forget their start (ImageNet's, or 0 and 1 from scratch), so evaluations of
shorter runs from scratch see poor statistics.

Solver: weight decay on every convolution's kernel and fc8's, no learning-rate multipliers
(levi_hassner_bn's). The depthwise kernels are decayed too, although MobileNet's authors advise
little or none on them (Howard et al. 2017: they have few parameters); at 4e-5 it is little.
"""

import os

import keras

from input import images
from trainer.models import mean_window
from trainer.models import replicas

# Kernels-only decay (nested backbone walked into) and no multipliers, as for every BN network.

PIXEL_SCALE = 1 / 127.5  # mean-subtracted pixels to about [-1, 1], the ImageNet weights' range
ALPHA = 1.0  # width multiplier; Keras has ImageNet weights for 0.35, 0.5, 0.75, 1.0, 1.3, 1.4
DROPOUT = 0.2  # TF-Slim's MobileNetV2 head (keep_prob 0.8)
HEAD = "fc8"

# The L2 term's factor (recipes.l2_term: gradient WEIGHT_DECAY * w): Sandler et al.'s 4e-5
# for MobileNetV2 on ImageNet. Small, which also suits fine-tuning: it pulls little on the
# pretrained weights.
WEIGHT_DECAY = 4e-5


def build(num_classes, mean_image, dropout=DROPOUT, crop_size=images.CROP_SIZE, weights=None,
          replica_layers=replicas.ReplicaLayers()):
    """The network as a Keras functional model; arguments as levi_hassner.build's, and:

    Args:
      weights: None (the backbone starts from scratch), or the path of a local weights file of
        a no-top MobileNetV2 backbone of width ALPHA.

    Returns:
      A model from {"image", "crop_offset", "flip"} to float32 logits [B, num_classes].

    Raises:
      FileNotFoundError: `weights` names no file.
    """
    if weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError(f"no MobileNetV2 backbone weights file {weights!r}")
    model_inputs = mean_window.inputs(crop_size)
    x = mean_window.subtract_mean(model_inputs, mean_image)
    x = keras.layers.Rescaling(PIXEL_SCALE, name="scale")(x)
    backbone = keras.applications.MobileNetV2(
        input_shape=(crop_size, crop_size, 3), alpha=ALPHA, include_top=False, weights=None,
        pooling="avg", name="backbone")
    if weights is not None:
        backbone.load_weights(weights)  # what keras.applications does with a path
    # keras.applications takes no batch-norm layer: the backbone is rebuilt with ours.
    backbone = replica_layers.with_batch_norm(backbone)
    x = backbone(x)
    x = replica_layers.dropout(dropout, "drop")(x)
    # float32 logits even under a mixed-precision policy, for the softmax loss.
    logits = keras.layers.Dense(num_classes, dtype="float32", name=HEAD)(x)
    return keras.Model(model_inputs, logits, name="mobilenet_v2")
