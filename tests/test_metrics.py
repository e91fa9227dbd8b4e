"""Exact and 1-off accuracy, per-class accuracy and the confusion matrix, on hand-made cases."""

import math

import numpy as np
import tensorflow as tf

from trainer import metrics

GROUPS = ["0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100"]


def _logits_for(predictions, num_classes=8):
    return tf.one_hot(predictions, num_classes) * 10.0


def test_one_off_is_a_neighbouring_group_not_top_two():
    labels = tf.constant([0, 1, 4, 4, 7, 3])
    predicted = [0, 2, 5, 2, 6, 7]  # exact, +1, +1, -2, -1, +4
    confusion = metrics.confusion_counts(labels, _logits_for(predicted), tf.ones(6, bool), 8)
    summary = metrics.summarize(confusion.numpy(), GROUPS)
    assert summary["examples"] == 6
    assert math.isclose(summary["accuracy"], 1 / 6)
    assert math.isclose(summary["accuracy_1off"], 4 / 6)
    # With the truth as every second choice, top-2 accuracy (rude-carnie's "1-off") would be
    # 6/6; ours is unchanged, since it looks only at how far the prediction is.
    second_choice_is_truth = _logits_for(predicted) + 5.0 * tf.one_hot(labels, 8)
    top2 = tf.reduce_mean(tf.cast(tf.math.in_top_k(labels, second_choice_is_truth, 2), float))
    assert float(top2) == 1.0
    ours = metrics.summarize(metrics.confusion_counts(labels, second_choice_is_truth,
                                                      tf.ones(6, bool), 8).numpy(), GROUPS)
    assert math.isclose(ours["accuracy_1off"], 4 / 6)


def test_masked_padding_is_not_counted():
    labels = tf.constant([2, 3, 0, 0])
    mask = tf.constant([True, True, False, False])
    confusion = metrics.confusion_counts(labels, _logits_for([2, 0, 0, 0]), mask, 8).numpy()
    assert confusion.sum() == 2
    assert confusion[2, 2] == 1 and confusion[3, 0] == 1


def test_confusion_rows_are_truth_and_per_class_accuracy():
    labels = tf.constant([1, 1, 1, 2])
    confusion = metrics.confusion_counts(labels, _logits_for([1, 1, 2, 2], 3), tf.ones(4, bool),
                                         3).numpy()
    np.testing.assert_array_equal(confusion, [[0, 0, 0], [0, 2, 1], [0, 0, 1]])
    summary = metrics.summarize(confusion, ["a", "b", "c"])
    assert math.isclose(summary["per_class_accuracy"]["b"], 2 / 3)
    assert summary["per_class_accuracy"]["c"] == 1.0
    assert summary["per_class_accuracy"]["a"] is None  # no example of that class
    assert "truth \\ predicted" in metrics.format_confusion(confusion, ["a", "b", "c"])


def test_ten_crops_average_probabilities():
    # Crop logits [B=1, 3 crops, 2 classes]: two crops mildly for class 0, one strongly for 1.
    logits = tf.constant([[[1.0, 0.0], [1.0, 0.0], [0.0, 9.0]]])
    confusion = metrics.confusion_counts(tf.constant([1]), logits, tf.constant([True]), 2)
    assert confusion.numpy()[1, 1] == 1  # mean of probabilities, not a vote


def test_counts_summed_over_workers_equal_one_pass():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 8, 50), rng.integers(0, 8, 50)
    whole = metrics.confusion_counts(labels, _logits_for(predicted), tf.ones(50, bool), 8)
    halves = sum(metrics.confusion_counts(labels[s], _logits_for(predicted[s]),
                                          tf.ones(25, bool), 8) for s in (slice(0, 25),
                                                                           slice(25, 50)))
    np.testing.assert_array_equal(whole.numpy(), halves.numpy())
