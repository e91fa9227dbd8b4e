"""The SavedModel of a trained job: face images in, the age group (or gender) out.

Two signatures, with the same outputs: `probabilities` over the classes, the predicted
`class_id` and its `label` ("25-32").
  serving_default  `image_bytes`: a batch of encoded JPEG/PNG/BMP/GIF bytes of any size (TF
                   Serving's REST API accepts {"instances": [{"b64": "..."}]}); each is decoded,
                   center-cropped to a square and resized to the records' size S with the
                   records build's own function (input.images).
  serving_pixels   `images`: uint8 [N, S, S, 3], face crops already at the records' size (S is
                   `record_size` in the metadata), for clients that cannot send JPEG and for
                   LiteRT (converters and mobile runtimes cannot decode JPEG inside a model).
From there both take evaluation's way: the center crop (or the paper's 10 crops, averaged)
minus the training folds' mean image.

The SavedModel also holds the class names and the training metadata (dataset, fold, accuracy,
model, step) as variables, and as `assets.extra/agenet.json` for people. It tracks the model's
tf.Variables, so that TensorFlow's C++ loader (saved_model_cli run, TF Serving) finds them.

Exports go into numbered version folders, TF Serving's layout: `--export_dir` names the model's
base folder and each export adds the next version (EXPORT_DIR/1, EXPORT_DIR/2, ...; TF Serving
serves the highest). A version is written in `EXPORT_DIR/.tmp-<pid>` and renamed to its number
when complete: a failed or killed export never leaves a version folder, and the next export
removes what a killed one left.
"""

import dataclasses
import errno
import functools
import json
import os
import re
import shutil

import tensorflow as tf

from input import batch
from input import images
from launch import entry
from trainer import checkpoint as checkpoint_lib
from trainer.serving import litert

METADATA_FILE = "agenet.json"
BYTES_SIGNATURE, BYTES_INPUT = "serving_default", "image_bytes"
PIXELS_SIGNATURE, PIXELS_INPUT = "serving_pixels", "images"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
TEMPORARY_PREFIX = ".tmp-"  # + the exporting process's id
# Faults of the disk that TensorFlow reports inside its own errors, in the OS's words.
_DISK_FAULTS = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EROFS, errno.EDQUOT))


class Classifier(tf.Module):
    """The served module: bytes (or decoded pixels) in, probabilities, class id and label out."""

    def __init__(self, model, class_names, record_size, crop_size, crops, metadata):
        super().__init__(name="agenet")
        # TensorFlow's session loader (saved_model_cli run, TF Serving) and the TFLite
        # converter look for the variables a function reads among the tf.Variables the module
        # tracks; Keras 3 wraps them, so they are tracked here as Keras' ExportArchive does.
        # The Keras model itself is not tracked: its wrappers would save every weight twice.
        self.tf_variables = [variable.value for variable in model.variables]
        self._run_model = functools.partial(model, training=False)
        self.class_names = tf.Variable(class_names, trainable=False, name="class_names")
        self.metadata = tf.Variable(json.dumps(metadata, sort_keys=True), trainable=False,
                                    name="metadata")
        self._record_size, self._crop_size, self._crops = record_size, crop_size, crops
        self.serve = tf.function(self._serve_bytes, input_signature=[
            tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
        self.serve_pixels = tf.function(self._classify, input_signature=[
            tf.TensorSpec([None, record_size, record_size, 3], tf.uint8, name=PIXELS_INPUT)])

    def signatures(self):
        return {BYTES_SIGNATURE: self.serve, PIXELS_SIGNATURE: self.serve_pixels}

    def _serve_bytes(self, image_bytes):
        size = self._record_size
        decoded = tf.map_fn(lambda encoded: images.decode_and_resize(encoded, size),
                            image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3],
                                                                           tf.uint8))
        return self._classify(decoded)

    def _classify(self, pixels):
        """Record-sized images -> the outputs of both signatures, as evaluation computes them."""
        windows, offsets, flips = self._crops_of(pixels)
        logits = self._run_model(batch.make_inputs(windows, offsets, flips))
        logits = tf.reshape(tf.cast(logits, tf.float32), [-1, self._crops, logits.shape[-1]])
        # As in evaluation (trainer.metrics): the crops' probabilities, averaged.
        probabilities = tf.reduce_mean(tf.nn.softmax(logits), axis=1)
        class_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "class_id": class_id,
                "label": tf.gather(self.class_names, class_id)}

    def _crops_of(self, pixels):
        """The crops of a batch of record-sized images, image by image ([N * crops, c, c, 3]),
        with their offsets and flips: evaluation's center crop or ten crops (input.images).

        Every image has the records' size, so every image is cut at the same places, known when
        the graph is built: whole-batch slices and fixed flips, which convert to LiteRT ops
        (input.images.ten_crops flips with a uint8 tf.where, which the converter cannot lower)."""
        size = self._crop_size
        shape_only = tf.zeros([self._record_size, self._record_size, 3], tf.uint8)
        if self._crops == 1:
            offsets = images.center_offset(shape_only, size)[None]
            flips = tf.constant([False])
        else:
            offsets, flips = images.ten_crop_offsets(shape_only, size)
        windows = []
        for offset, flipped in zip(tf.unstack(offsets), tf.get_static_value(flips)):
            window = tf.slice(pixels, tf.stack([0, offset[0], offset[1], 0]), [-1, size, size, 3])
            windows.append(tf.reverse(window, axis=[2]) if flipped else window)
        count = tf.shape(pixels)[0]
        return (tf.reshape(tf.stack(windows, axis=1), [-1, size, size, 3]),
                tf.tile(offsets, [count, 1]), tf.tile(flips, [count]))


@dataclasses.dataclass(frozen=True)
class Export:
    """What trainer.export wrote: the version folder, its metadata, and the LiteRT check's
    report (litert.write_and_check) when asked for."""
    path: str
    metadata: dict
    litert: dict = None


def export(model_dir, export_dir, crops=1, checkpoint_path=None, with_litert=False):
    """Writes the SavedModel of the job in `model_dir` as the next version of `export_dir`
    (EXPORT_DIR/1, then 2, ...), with its LiteRT model in it when `with_litert`; an Export.

    Raises entry.UserError for a mistake found before any work (not a job folder, no
    checkpoint, an export_dir that is a SavedModel itself or cannot be written, no held-out
    records to check the LiteRT model on) and entry.Failure when the disk fails during the save
    or the LiteRT model disagrees with the SavedModel; either way no version is added and
    nothing is left behind.
    """
    check_export_dir(export_dir)
    run = checkpoint_lib.read_run(model_dir)  # a UserError when it is not a job folder
    path = checkpoint_path or tf.train.latest_checkpoint(checkpoint_lib.checkpoint_dir(model_dir))
    if not path:
        raise entry.UserError(f"no checkpoint in {checkpoint_lib.checkpoint_dir(model_dir)}: "
                              f"--model_dir {model_dir} has not saved one yet")
    faces = litert.held_out_faces(run) if with_litert else None
    _remove_leftovers(export_dir)
    temporary, created = _make_temporary(export_dir)
    try:
        metadata, report = _write(model_dir, run, path, crops, temporary, export_dir, faces)
        version_dir = _publish(temporary, export_dir)
    except BaseException:
        shutil.rmtree(created, ignore_errors=True)
        raise
    return Export(version_dir, metadata, report)


def check_export_dir(export_dir):
    """Refuses an export_dir that is a file, or a SavedModel itself (a version folder)."""
    if os.path.isdir(export_dir):
        if is_saved_model(export_dir):
            raise entry.UserError(f"--export_dir {export_dir} is a SavedModel itself: give the "
                                  f"folder its versions go in (exports are written to "
                                  f"EXPORT_DIR/1, EXPORT_DIR/2, ...)")
    elif os.path.lexists(export_dir):
        raise entry.UserError(f"--export_dir {export_dir} is a file: give the path of a folder")


def is_saved_model(folder):
    return any(os.path.isfile(os.path.join(folder, name)) for name in SAVED_MODEL_FILES)


def versions(export_dir):
    """The version numbers in `export_dir`, ascending: its sub-folders named by a number, as
    TF Serving reads them (anything else in it is ignored)."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if name.isascii() and name.isdigit()
                  and os.path.isdir(os.path.join(export_dir, name)))


def _publish(temporary, export_dir):
    """Renames the complete `temporary` to the next version folder; returns its path. An
    export that published the same number first makes this one take the next."""
    while True:
        version_dir = os.path.join(export_dir, str((versions(export_dir) or [0])[-1] + 1))
        try:
            os.rename(temporary, version_dir)
            return version_dir
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise


def temporary_name(export_dir, pid=None):
    """The folder an export writes in before it becomes a version: inside export_dir, under a
    name that is not a number (TF Serving never loads it)."""
    return os.path.join(export_dir, f"{TEMPORARY_PREFIX}{os.getpid() if pid is None else pid}")


def _remove_leftovers(export_dir):
    """Removes the temporary folders of earlier exports to this export_dir that were killed:
    exactly TEMPORARY_PREFIX and the id of a process that is gone."""
    if not os.path.isdir(export_dir):
        return
    pattern = re.compile(re.escape(TEMPORARY_PREFIX) + r"(\d+)")
    for candidate in os.listdir(export_dir):
        match = pattern.fullmatch(candidate)
        if match and not _process_exists(int(match.group(1))):
            shutil.rmtree(os.path.join(export_dir, candidate), ignore_errors=True)


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


def _write(model_dir, run, path, crops, temporary, export_dir, faces):
    """Saves the SavedModel and its metadata file into `temporary`, and its LiteRT model when
    there are `faces` to check it on; returns (the metadata, the LiteRT report or None)."""
    model = checkpoint_lib.load_model(run, path)  # a UserError for another model's checkpoint
    metadata = _metadata(model_dir, run, path, crops)
    classifier = Classifier(model, run["class_names"], run["mean_shape"][0], run["crop_size"],
                            crops, metadata)
    try:
        tf.saved_model.save(classifier, temporary, signatures=classifier.signatures())
        os.makedirs(os.path.join(temporary, "assets.extra"), exist_ok=True)
        with open(os.path.join(temporary, "assets.extra", METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)
        report = None if faces is None else litert.write_and_check(temporary, PIXELS_SIGNATURE,
                                                                   faces)
    except (OSError, tf.errors.OpError) as error:
        cause = _disk_fault(error)
        if cause is None:
            raise
        raise entry.Failure(f"{export_dir}: {cause}; nothing was exported") from None
    return metadata, report


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
