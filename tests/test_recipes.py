"""The solvers: the paper's exactly, scaled to other batch sizes by the same examples seen."""

import functools
import math

import pytest

from trainer import recipes


isclose = functools.partial(math.isclose, rel_tol=1e-6)  # float32 rates


def rate(schedule, step):
    return float(schedule(step))


def test_the_paper_recipe_is_levi_and_hassners_solver():
    paper = recipes.resolve("paper")
    assert recipes.total_steps(paper, 0, 0, train_examples=10_000, global_batch_size=50) == 50_000
    assert recipes.warmup_steps(paper, 50, 50_000, steps_per_epoch=200) == 0  # as published
    schedule = recipes.schedule(paper, 50, total=50_000, warmup=0)
    assert isclose(rate(schedule, 0), 1e-3)
    assert isclose(rate(schedule, 9_999), 1e-3)
    assert isclose(rate(schedule, 10_000), 1e-4)
    assert isclose(rate(schedule, 20_000), 1e-5, rel_tol=1e-5)
    optimizer = recipes.optimizer(paper, 50, 50_000, 0, "fp32")
    assert optimizer.momentum == 0.9 and not optimizer.nesterov


def test_a_larger_batch_scales_the_rate_after_a_warm_up_and_shrinks_the_steps_alike():
    paper = recipes.resolve("paper")
    assert recipes.total_steps(paper, 0, 0, 10_000, 400) == 6_250  # the same 2.5M examples
    warmup = recipes.warmup_steps(paper, 400, 6_250, steps_per_epoch=25)
    assert warmup == 125  # Goyal et al.'s 5 epochs
    schedule = recipes.schedule(paper, 400, total=6_250, warmup=warmup)
    assert isclose(rate(schedule, 0), 1e-3)  # the reference batch's rate, climbing linearly...
    assert isclose(rate(schedule, 62.5), 4.5e-3)
    assert isclose(rate(schedule, 125), 8e-3)  # ...to the scaled one
    assert isclose(rate(schedule, 1_249), 8e-3)
    assert isclose(rate(schedule, 1_250), 8e-4)


def test_a_short_job_warms_up_over_at_most_a_fifth_of_its_steps():
    modern = recipes.resolve("modern")  # its own warm-up: 5% of the steps
    assert recipes.warmup_steps(modern, 2_048, 210, steps_per_epoch=7) == 35  # 5 epochs
    assert recipes.warmup_steps(modern, 2_048, 100, steps_per_epoch=7) == 20  # a fifth
    assert recipes.warmup_steps(modern, 256, 1_000, steps_per_epoch=7) == 50  # not scaled up


def test_steps_or_epochs_given_override_the_recipes_length():
    paper = recipes.resolve("paper")
    assert recipes.total_steps(paper, 123, 5, 10_000, 50) == 123
    assert recipes.total_steps(paper, 0, 2, 1_000, 64) == 32  # ceil(2 * 1000 / 64)


def test_the_modern_recipe_warms_up_then_decays_to_zero():
    modern = recipes.resolve("modern")
    schedule = recipes.schedule(modern, 256, total=1_000, warmup=50)  # peak 0.1 at 256
    assert rate(schedule, 0) == 0.0
    assert isclose(rate(schedule, 50), 0.1)
    assert rate(schedule, 25) < rate(schedule, 50) > rate(schedule, 500) > rate(schedule, 999)
    assert rate(schedule, 1_000) < 1e-6


def test_overrides_and_unknown_names():
    assert recipes.resolve("modern", label_smoothing=0.0, dropout=None).label_smoothing == 0.0
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        recipes.resolve("fast")
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        recipes.resolve("paper", schedule="linear")
    optimizer = recipes.optimizer(recipes.resolve("modern"), 64, 100, 5, "mixed_float16")
    assert optimizer.__class__.__name__ == "LossScaleOptimizer"


@pytest.mark.parametrize("precision", ["fp32", "mixed_float16"])
def test_the_moving_average_is_evaluated_then_the_trained_weights_go_on(precision):
    import keras
    import numpy as np
    import tensorflow as tf

    weights = tf.Variable([1.0, 2.0])
    optimizer = recipes.optimizer(recipes.resolve("modern", ema_decay=0.5), 256, 100, 0,
                                  precision)
    optimizer.build([weights])
    trained, average = [], None
    for gradient in ([1.0, -1.0], [2.0, 0.0], [0.5, 3.0]):
        # Under loss scaling the optimizer is given gradients of the scaled loss.
        scale = float(getattr(optimizer, "dynamic_scale", 1.0))
        optimizer.apply_gradients([(scale * tf.constant(gradient), weights)])
        trained.append(weights.numpy().copy())
        # Polyak averaging from the first step's weights on.
        average = trained[-1] if average is None else 0.5 * average + 0.5 * trained[-1]
    assert not np.allclose(average, trained[-1])
    with recipes.averaged_weights(optimizer, [weights]):
        np.testing.assert_allclose(weights.numpy(), average, rtol=1e-6)
    np.testing.assert_array_equal(weights.numpy(), trained[-1])  # training goes on from here
    recipes.use_average(optimizer, [weights])  # the end of training: the average for good
    np.testing.assert_allclose(weights.numpy(), average, rtol=1e-6)

    plain = recipes.optimizer(recipes.resolve("modern"), 256, 100, 0, precision)
    plain.build([weights])
    with recipes.averaged_weights(plain, [weights]):
        np.testing.assert_allclose(weights.numpy(), average, rtol=1e-6)  # nothing swapped
    assert isinstance(plain, keras.optimizers.Optimizer)
