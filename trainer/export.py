"""Exports a trained checkpoint as a SavedModel that takes encoded image bytes.

  python -m trainer.export --model_dir=runs/lh --export_dir=runs/lh/export
  python -m trainer.export --model_dir=runs/lh --export_dir=runs/lh/export10 --eval_crops=10

The serving signature takes a batch of JPEG/PNG/BMP/GIF bytes, named `image_bytes` (TF
Serving's REST API accepts {"instances": [{"b64": "..."}]}), and returns `probabilities` over
the classes, the predicted `class_id` and its `label` ("25-32"). Inside the graph, each image
goes the way a recorded one went: decoded, center-cropped to a square, resized to the records'
size with the records build's own function (input.images), then the center crop (or the
paper's 10 crops, averaged) minus the training folds' mean image, exactly as in evaluation.

The SavedModel also holds the class names and the training metadata (dataset, fold, accuracy,
model, step) as variables, and as `assets.extra/agenet.json` for people.
"""

import json
import os
import sys

from absl import app
from absl import flags
import tensorflow as tf

from input import images
from trainer import checkpoint as checkpoint_lib
from trainer import cli

cli.define_flags("model_dir", "checkpoint", "eval_crops")
flags.DEFINE_string("export_dir", None, "Where to write the SavedModel (must not exist).")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS
METADATA_FILE = "agenet.json"
SIGNATURE_INPUT = "image_bytes"


class ExportError(ValueError):
    pass


class Classifier(tf.Module):
    """The served module: bytes in, probabilities, class id and label out."""

    def __init__(self, model, class_names, record_size, crop_size, crops, metadata):
        super().__init__(name="agenet")
        self.model = model
        self.class_names = tf.Variable(class_names, trainable=False, name="class_names")
        self.metadata = tf.Variable(json.dumps(metadata, sort_keys=True), trainable=False,
                                    name="metadata")
        self._record_size, self._crop_size, self._crops = record_size, crop_size, crops

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SIGNATURE_INPUT)])
    def serve(self, image_bytes):
        size = self._record_size
        decoded = tf.map_fn(lambda encoded: images.decode_and_resize(encoded, size),
                            image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3],
                                                                           tf.uint8))
        crops = tf.map_fn(self._crops_of, decoded, fn_output_signature=(
            tf.TensorSpec([self._crops, self._crop_size, self._crop_size, 3], tf.uint8),
            tf.TensorSpec([self._crops, 2], tf.int32), tf.TensorSpec([self._crops], tf.bool)))
        windows, offsets, flips = (tf.reshape(t, [-1] + t.shape[2:].as_list()) for t in crops)
        logits = self.model({"image": windows, "crop_offset": offsets, "flip": flips},
                            training=False)
        logits = tf.reshape(tf.cast(logits, tf.float32), [-1, self._crops, logits.shape[-1]])
        # As in evaluation (trainer.metrics): the crops' probabilities, averaged.
        probabilities = tf.reduce_mean(tf.nn.softmax(logits), axis=1)
        class_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "class_id": class_id,
                "label": tf.gather(self.class_names, class_id)}

    def _crops_of(self, image):
        if self._crops == 1:
            offset = images.center_offset(image, self._crop_size)
            return (images.crop(image, offset, self._crop_size)[None], offset[None],
                    tf.constant([False]))
        return images.ten_crops(image, self._crop_size)


def export(model_dir, export_dir, crops=1, checkpoint_path=None):
    """Writes the SavedModel of the job in `model_dir`; returns its metadata."""
    if os.path.exists(export_dir):
        raise ExportError(f"{export_dir} exists: choose a new --export_dir")
    run = checkpoint_lib.read_run(model_dir)
    path = checkpoint_path or tf.train.latest_checkpoint(checkpoint_lib.checkpoint_dir(model_dir))
    if not path:
        raise ExportError(f"no checkpoint in {model_dir}")
    model = checkpoint_lib.load_model(run, path)
    metadata = _metadata(model_dir, run, path, crops)
    classifier = Classifier(model, run["class_names"], run["mean_shape"][0], run["crop_size"],
                            crops, metadata)
    temporary = f"{export_dir}.tmp-{os.getpid()}"
    tf.saved_model.save(classifier, temporary, signatures={"serving_default": classifier.serve})
    os.makedirs(os.path.join(temporary, "assets.extra"), exist_ok=True)
    with open(os.path.join(temporary, "assets.extra", METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    os.replace(temporary, export_dir)  # a killed export never leaves a half SavedModel there
    return metadata


def _metadata(model_dir, run, path, crops):
    """What the SavedModel says of itself: the job, the step, its last held-out accuracy."""
    reader = tf.train.load_checkpoint(path)
    step = int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))
    evaluation = _last_evaluation(model_dir)
    return {"model": run["model"], "task": run["task"], "class_names": run["class_names"],
            "records": run["records"], "held_out_fold": run["held_out_fold"],
            "eval_splits": run["eval_splits"], "step": step, "checkpoint": path,
            "crop_size": run["crop_size"], "record_size": run["mean_shape"][0],
            "crops": crops, "eval": evaluation}


def _last_evaluation(model_dir):
    path = os.path.join(model_dir, "metrics.jsonl")
    last = None
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if "eval/accuracy" in record:
                    last = {"step": record["step"], "accuracy": record["eval/accuracy"],
                            "accuracy_1off": record["eval/accuracy_1off"],
                            "examples": record["eval/examples"]}
    return last


def main(argv):
    del argv
    cli.require("model_dir", "export_dir")
    cli.start_process()
    try:
        metadata = export(FLAGS.model_dir, FLAGS.export_dir, int(FLAGS.eval_crops),
                          FLAGS.checkpoint)
    except (ExportError, checkpoint_lib.CheckpointMismatch, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return cli.ERROR_EXIT_CODE
    print(f"exported {metadata['model']} ({metadata['task']}, step {metadata['step']}, "
          f"{metadata['crops']} crop(s)) to {FLAGS.export_dir}", flush=True)
    print(json.dumps(metadata), flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
