"""Evaluation metrics, all derived from one confusion matrix.

The evaluation step adds each batch's confusion counts (padding masked out); the counts are
summed over batches and over workers, so every held-out example counts exactly once whatever
the number of workers. Exact accuracy, 1-off accuracy, per-class accuracy and the matrix itself
all come from those counts.

1-off counts a prediction at most one age group away from the truth as correct
(|predicted group - true group| <= 1), as Levi & Hassner report it. It is not top-2 accuracy
(which some public ports report under that name).
"""

import numpy as np
import tensorflow as tf


def confusion_counts(labels, logits, mask, num_classes):
    """[num_classes, num_classes] int64 counts (rows: truth, columns: prediction) of a batch.

    Args:
      labels: int [B] true classes.
      logits: [B, num_classes] (or [B, crops, num_classes], averaged over the crops as
        probabilities, the paper's oversampling).
      mask: bool [B], False on padding.
      num_classes: static number of classes.
    """
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    if probabilities.shape.rank == 3:
        probabilities = tf.reduce_mean(probabilities, axis=1)
    predictions = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    weights = tf.cast(mask, tf.int64)
    return tf.math.confusion_matrix(tf.cast(labels, tf.int32), predictions,
                                    num_classes=num_classes, weights=weights, dtype=tf.int64)


def summarize(confusion, class_names):
    """The metrics of a summed confusion matrix, as a dict of plain Python values."""
    confusion = np.asarray(confusion, dtype=np.int64)
    total = int(confusion.sum())
    truth = confusion.sum(axis=1)
    distance = np.abs(np.subtract.outer(np.arange(len(class_names)), np.arange(len(class_names))))
    return {
        "examples": total,
        "accuracy": _ratio(np.trace(confusion), total),
        "accuracy_1off": _ratio(confusion[distance <= 1].sum(), total),
        "per_class_accuracy": {name: _ratio(confusion[i, i], truth[i])
                               for i, name in enumerate(class_names)},
        "confusion": confusion.tolist(),
    }


def format_confusion(confusion, class_names):
    """The matrix as text: one row per true class, one column per prediction."""
    width = max(6, *(len(name) for name in class_names))
    header = " " * width + " " + " ".join(f"{name:>{width}}" for name in class_names)
    rows = [f"{name:>{width}} " + " ".join(f"{count:>{width}d}" for count in row)
            for name, row in zip(class_names, np.asarray(confusion))]
    return "\n".join(["truth \\ predicted", header] + rows)


def _ratio(numerator, denominator):
    return float(numerator) / float(denominator) if denominator else None  # JSON null
