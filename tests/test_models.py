"""The model registry, Levi & Hassner against the paper, the mean window and the tiny model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import conftest
from input import batch as batch_lib
from trainer import models
from trainer import recipes
from trainer.models import levi_hassner
from trainer.models import nesting
from trainer.models import replicas

PAPER_CLASSES = 8
PAPER_PARAMETERS = 11_415_048
PAPER_FLOPS = 1.42e9  # about 0.71 G multiply-adds forward per image
RECORD, CROP = 64, 56  # small images keep the tests fast; the code paths are the full-size ones


@pytest.fixture(scope="module")
def paper_model():
    keras.utils.set_random_seed(0)
    return models.build("levi_hassner", PAPER_CLASSES, mean_image=None)


def random_batch(rng, size, record=RECORD, crop=CROP):
    return conftest.random_batch(rng, size, record, crop, PAPER_CLASSES)


def trainable_parameters(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_levi_hassner_shapes_as_published(paper_model):
    sides = {name: paper_model.get_layer(name).output.shape[1]
             for name in ("mean_window", "conv1", "pool1", "norm1", "conv2", "pool2", "norm2",
                          "conv3", "pool5")}
    assert sides == {"mean_window": 227, "conv1": 56, "pool1": 28, "norm1": 28, "conv2": 28,
                     "pool2": 14, "norm2": 14, "conv3": 14, "pool5": 7}
    assert paper_model.get_layer("fc6").kernel.shape == (18_816, 512)
    assert paper_model.output.shape == (None, PAPER_CLASSES)


def test_levi_hassner_parameters_and_flops(paper_model):
    assert trainable_parameters(paper_model) == PAPER_PARAMETERS
    assert models.flops_per_image(paper_model) == pytest.approx(PAPER_FLOPS, rel=0.02)


def test_mean_image_is_a_weight_not_a_parameter():
    model = models.build("levi_hassner", PAPER_CLASSES, np.zeros((256, 256, 3), np.float32))
    assert trainable_parameters(model) == PAPER_PARAMETERS
    assert [v.path for v in model.non_trainable_weights] == ["mean_window/mean"]


def test_registry_builds_by_name_and_lists_known_names():
    assert models.names() == ["levi_hassner", "levi_hassner_bn", "mobilenet_v2", "resnet", "tiny"]
    model = models.build("tiny", 2, None, crop_size=CROP)
    assert model.output.shape == (None, 2)
    with pytest.raises(ValueError, match="levi_hassner, levi_hassner_bn, mobilenet_v2, resnet, tiny"):
        models.build("alexnet", PAPER_CLASSES, None)


def caffe_lrn(a, size=5, alpha=1e-4, beta=0.75):
    """Caffe's LRN across channels (NHWC here), written from its formula."""
    channels = a.shape[-1]
    out = np.empty_like(a)
    for c in range(channels):
        window = a[..., max(0, c - size // 2):min(channels, c + size // 2 + 1)]
        out[..., c] = a[..., c] / (1 + alpha / size * np.sum(window ** 2, axis=-1)) ** beta
    return out


def test_lrn_is_caffes_formula():
    # Activations of tens make the normalisation strong enough to see (scale down ~10-25%).
    a = np.random.default_rng(0).uniform(0, 60, (2, 3, 3, 12)).astype(np.float32)
    expected = caffe_lrn(a.astype(np.float64))
    assert np.abs(expected / a - 1).max() > 0.1
    got = levi_hassner.CaffeLRN()(a).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_the_l2_term_is_caffes_decay_on_weights_only(paper_model):
    variables = levi_hassner.decay_variables(paper_model)
    assert [v.path for v in variables] == [f"{name}/kernel" for name in
                                           ("conv1", "conv2", "conv3", "fc6", "fc7", "fc8")]
    wd = levi_hassner.WEIGHT_DECAY
    expected = 0.5 * wd * sum(np.sum(np.square(v.numpy(), dtype=np.float64)) for v in variables)
    with tf.GradientTape() as tape:
        loss = recipes.l2_term(variables, wd)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    for variable, gradient in zip(variables, tape.gradient(loss, variables)):
        np.testing.assert_allclose(gradient.numpy(), wd * variable.numpy(), rtol=1e-6)


def test_lr_multipliers_as_the_solver(paper_model):
    multipliers = levi_hassner.lr_multipliers(paper_model)
    assert set(multipliers) == {v.path for v in paper_model.trainable_variables}
    assert multipliers["conv1/kernel"] == 1 and multipliers["fc7/bias"] == 2
    assert multipliers["fc8/kernel"] == 10 and multipliers["fc8/bias"] == 20


def test_initialisers_as_published(paper_model):
    def values(name, weight):
        return getattr(paper_model.get_layer(name), weight).numpy()

    assert values("conv1", "kernel").std() == pytest.approx(0.01, rel=0.05)
    assert values("fc6", "kernel").std() == pytest.approx(0.005, rel=0.01)
    assert values("fc8", "kernel").std() == pytest.approx(0.01, rel=0.1)
    for name in ("conv2", "fc6", "fc7"):
        assert np.all(values(name, "bias") == 1)
    for name in ("conv1", "conv3", "fc8"):
        assert np.all(values(name, "bias") == 0)


def numpy_mean_window(batch, mean):
    windows = []
    for (y, x), flipped in zip(batch["crop_offset"], batch["flip"]):
        window = mean[y:y + CROP, x:x + CROP]
        windows.append(window[:, ::-1] if flipped else window)
    return batch["image"].astype(np.float32) - np.stack(windows)


def test_mean_window_under_each_crop_eagerly_and_in_graphs():
    rng = np.random.default_rng(1)
    mean = rng.uniform(0, 255, (RECORD, RECORD, 3)).astype(np.float32)
    model = models.build("levi_hassner", PAPER_CLASSES, mean, crop_size=CROP)
    first_input = keras.Model(model.inputs, model.get_layer("mean_window").output)
    batch = random_batch(rng, 16)
    batch["crop_offset"][:2] = [[0, 0], [RECORD - CROP, RECORD - CROP]]  # both extremes
    batch["flip"][:2] = [True, True]
    expected = numpy_mean_window(batch, mean)
    features = batch_lib.inputs_of(batch)

    np.testing.assert_allclose(first_input(features).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(tf.function(first_input)(features).numpy(), expected, rtol=1e-6)
    mapped = tf.data.Dataset.from_tensors(features).map(first_input)
    np.testing.assert_allclose(next(iter(mapped)).numpy(), expected, rtol=1e-6)


def test_no_mean_image_subtracts_nothing():
    model = models.build("levi_hassner", PAPER_CLASSES, None, crop_size=CROP)
    first_input = keras.Model(model.inputs, model.get_layer("mean_window").output)
    batch = random_batch(np.random.default_rng(2), 4)
    np.testing.assert_array_equal(first_input(batch_lib.inputs_of(batch)).numpy(),
                                  batch["image"].astype(np.float32))


def test_mixed_bfloat16_runs_on_cpu(mixed_bfloat16):
    model = models.build("levi_hassner", PAPER_CLASSES, np.zeros((RECORD, RECORD, 3), np.float32),
                         crop_size=CROP)
    assert {model.get_layer(name).compute_dtype for name in ("conv1", "conv2", "conv3", "fc6")} \
        == {"bfloat16"}
    assert model.get_layer("mean_window").variable_dtype == "float32"
    logits = model(batch_lib.inputs_of(random_batch(np.random.default_rng(3), 4)))
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))


def test_tiny_model_has_the_same_interface_and_trains():
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    mean = rng.uniform(0, 255, (RECORD, RECORD, 3)).astype(np.float32)
    model = models.build("tiny", PAPER_CLASSES, mean, crop_size=CROP)
    assert sorted(model.input) == sorted(batch_lib.MODEL_INPUTS)
    assert model.output.shape == (None, PAPER_CLASSES) and model.output.dtype == "float32"
    assert 1_000 < trainable_parameters(model) < 10_000
    tiny = models.get("tiny")
    assert set(tiny.lr_multipliers(model)) == {v.path for v in model.trainable_variables}

    batch = random_batch(rng, 16)
    losses = conftest.training_losses(model, tiny, batch, 30)
    assert losses[-1] < 0.7 * losses[0], losses


def test_saved_model_carries_the_mean(tmp_path):
    rng = np.random.default_rng(5)
    mean = rng.uniform(0, 255, (RECORD, RECORD, 3)).astype(np.float32)
    model = models.build("tiny", PAPER_CLASSES, mean, crop_size=CROP)
    features = batch_lib.inputs_of(random_batch(rng, 4))
    model.export(str(tmp_path / "saved"), verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(restored.serve(features).numpy(), model(features).numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", models.names())
def test_every_dropout_layer_draws_per_replica_masks(name):
    model = models.build(name, PAPER_CLASSES, None, crop_size=CROP, dropout=0.5)
    dropouts = [layer for layer in nesting.all_layers(model)
                if isinstance(layer, keras.layers.Dropout)]
    assert dropouts and all(isinstance(layer, replicas.Dropout) for layer in dropouts)


def test_replicas_draw_other_masks_from_one_seed_state():
    def masks(replica_id, state):
        layer = replicas.Dropout(0.5, replica_id=lambda: replica_id)
        layer.build((None, 1000))
        layer.seed_generator.state.assign(state)
        return [np.not_equal(layer(np.ones((4, 1000), np.float32), training=True), 0)
                for _ in range(2)]

    state = np.array([7, 0])
    first, second = masks(0, state), masks(1, state)
    assert 0.45 < first[0].mean() < 0.55
    assert np.mean(first[0] != second[0]) > 0.4  # replicas: their own masks
    assert np.mean(first[0] != first[1]) > 0.4  # steps: new masks
    # The state and the replica decide the masks: a resumed job draws the same.
    np.testing.assert_array_equal(masks(1, state)[1], second[1])
