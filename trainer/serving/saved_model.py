"""The SavedModel of a trained job: encoded image bytes in, the age group (or gender) out.

The serving signature takes a batch of JPEG/PNG/BMP/GIF bytes, named `image_bytes` (TF
Serving's REST API accepts {"instances": [{"b64": "..."}]}), and returns `probabilities` over
the classes, the predicted `class_id` and its `label` ("25-32"). Inside the graph, each image
goes the way a recorded one went: decoded, center-cropped to a square, resized to the records'
size with the records build's own function (input.images), then the center crop (or the
paper's 10 crops, averaged) minus the training folds' mean image, exactly as in evaluation.

The SavedModel also holds the class names and the training metadata (dataset, fold, accuracy,
model, step) as variables, and as `assets.extra/agenet.json` for people.

An export is written into a sibling folder `EXPORT_DIR.tmp-<pid>` and renamed into place when
complete: a failed or killed export never leaves a folder at EXPORT_DIR, and the next export
to the same path removes what a killed one left.
"""

import errno
import json
import os
import re
import shutil

import tensorflow as tf

from input import batch
from input import images
from launch import entry
from trainer import checkpoint as checkpoint_lib

METADATA_FILE = "agenet.json"
SIGNATURE_INPUT = "image_bytes"
TEMPORARY_SUFFIX = ".tmp-"  # + the exporting process's id
# Faults of the disk that TensorFlow reports inside its own errors, in the OS's words.
_DISK_FAULTS = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EROFS, errno.EDQUOT))


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
        logits = self.model(batch.make_inputs(windows, offsets, flips), training=False)
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
    """Writes the SavedModel of the job in `model_dir` to `export_dir`; returns its metadata.

    Raises entry.UserError for a mistake found before any work (not a job folder, no
    checkpoint, an export_dir that exists or cannot be written) and entry.Failure when the
    disk fails during the save; either way nothing is left at export_dir or beside it.
    """
    check_export_dir(export_dir)
    run = checkpoint_lib.read_run(model_dir)  # a UserError when it is not a job folder
    path = checkpoint_path or tf.train.latest_checkpoint(checkpoint_lib.checkpoint_dir(model_dir))
    if not path:
        raise entry.UserError(f"no checkpoint in {checkpoint_lib.checkpoint_dir(model_dir)}: "
                              f"--model_dir {model_dir} has not saved one yet")
    _remove_leftovers(export_dir)
    temporary, created = _make_temporary(export_dir)
    try:
        metadata = _write(model_dir, run, path, crops, temporary, export_dir)
        os.replace(temporary, export_dir)
    except BaseException:
        shutil.rmtree(created, ignore_errors=True)
        raise
    return metadata


def check_export_dir(export_dir):
    """Refuses an export_dir that exists (an export is never overwritten) or is a file."""
    if os.path.isdir(export_dir):
        raise entry.UserError(f"--export_dir {export_dir} exists: choose a new one")
    if os.path.lexists(export_dir):
        raise entry.UserError(f"--export_dir {export_dir} is a file: give the path of a new "
                              f"folder")


def temporary_name(export_dir, pid=None):
    return f"{export_dir}{TEMPORARY_SUFFIX}{os.getpid() if pid is None else pid}"


def _remove_leftovers(export_dir):
    """Removes the temporary folders of earlier exports to this path that were killed: exactly
    this path plus TEMPORARY_SUFFIX and the id of a process that is gone."""
    parent, name = os.path.split(os.path.abspath(export_dir))
    if not os.path.isdir(parent):
        return
    pattern = re.compile(re.escape(name + TEMPORARY_SUFFIX) + r"(\d+)")
    for candidate in os.listdir(parent):
        match = pattern.fullmatch(candidate)
        if match and not _process_exists(int(match.group(1))):
            shutil.rmtree(os.path.join(parent, candidate), ignore_errors=True)


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _make_temporary(export_dir):
    """Creates the temporary sibling folder (and missing parents), which also finds a path that
    cannot be written before any work. Returns (the folder, the topmost folder created)."""
    temporary = temporary_name(export_dir)
    created = temporary
    parent = os.path.dirname(os.path.abspath(temporary))
    while not os.path.lexists(parent):
        created, parent = parent, os.path.dirname(parent)
    try:
        os.makedirs(temporary)
    except OSError as error:
        shutil.rmtree(created, ignore_errors=True)
        raise entry.UserError(f"--export_dir {export_dir}: cannot write there: "
                              f"{_cause(error)}") from None
    return temporary, created


def _write(model_dir, run, path, crops, temporary, export_dir):
    """Saves the SavedModel and its metadata file into `temporary`; returns the metadata."""
    model = checkpoint_lib.load_model(run, path)  # a UserError for another model's checkpoint
    metadata = _metadata(model_dir, run, path, crops)
    classifier = Classifier(model, run["class_names"], run["mean_shape"][0], run["crop_size"],
                            crops, metadata)
    try:
        tf.saved_model.save(classifier, temporary,
                            signatures={"serving_default": classifier.serve})
        os.makedirs(os.path.join(temporary, "assets.extra"), exist_ok=True)
        with open(os.path.join(temporary, "assets.extra", METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)
    except (OSError, tf.errors.OpError) as error:
        cause = _disk_fault(error)
        if cause is None:
            raise
        raise entry.Failure(f"{export_dir}: {cause}; nothing was exported") from None
    return metadata


def _disk_fault(error):
    """The cause ("no space left on device") if `error` is the disk's fault, else None."""
    if isinstance(error, OSError):
        return _cause(error) if entry.is_path_error(error) else None
    # TensorFlow's file system reports the OS error's text inside its own message.
    return next((text.lower() for text in _DISK_FAULTS if text in error.message), None)


def _cause(error):
    return (error.strerror or str(error)).lower()


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
