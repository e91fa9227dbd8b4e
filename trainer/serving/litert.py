"""The LiteRT model of an export (`python -m trainer.export ... --litert`): `model.tflite`.

The SavedModel's pixels signature, converted with TensorFlow's converter (`serving_pixels`
keeps the preprocessing; Keras' own LiteRT export would convert the model's call without it):
uint8 [N, S, S, 3] face crops at the records' size in; `probabilities`, `class_id` and `label`
out, as the SavedModel's. The label converts too: the class names become a constant string
tensor. Before the export is published, the file is run with the LiteRT runtime
(ai-edge-litert) on a few held-out faces of the job's records and compared with the SavedModel:
a difference over TOLERANCE fails the export.
"""

import os
import statistics
import time

import numpy as np
import tensorflow as tf

from input import records as records_lib
from launch import entry

FILE = "model.tflite"
TOLERANCE = 1e-4  # the largest difference of a probability accepted against the SavedModel
FACES = 8  # held-out faces the two are compared on
TIMED_CALLS = 20  # one face per call, after WARM_UP_CALLS; the median is reported
WARM_UP_CALLS = 3


def held_out_faces(run, count=FACES):
    """The first `count` images (uint8 [count, S, S, 3]) of the held-out split of the job
    described by `run` (its run.json); a UserError, before any work, if they cannot be read."""
    if not run.get("records"):
        raise entry.UserError("--litert compares the LiteRT model with the SavedModel on the "
                              "job's held-out records, and this job trained on synthetic data")
    try:
        records = records_lib.load(run["records"])
        files = records.files(records.shards(run["eval_splits"]))
    except entry.UserError as error:
        raise entry.UserError(f"--litert compares the LiteRT model with the SavedModel on the "
                              f"job's held-out records: {error}") from None
    dataset = tf.data.TFRecordDataset(files).take(count).map(records.parse)
    return np.stack([example["image"].numpy() for example in dataset])


def write_and_check(saved_model_dir, signature, faces):
    """Converts `signature` of the SavedModel to saved_model_dir/FILE, runs it on `faces` and
    compares it with the SavedModel; returns the report (sizes, largest difference, seconds
    per image of each). entry.Failure if the two disagree."""
    path = os.path.join(saved_model_dir, FILE)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=[signature])
    with open(path, "wb") as f:
        f.write(converter.convert())
    saved = _saved_model_runner(saved_model_dir, signature)
    lite = _litert_runner(path, signature)
    expected, got = saved(faces), lite(faces)
    difference = float(np.abs(got["probabilities"] - expected["probabilities"]).max())
    if not difference < TOLERANCE:
        raise entry.Failure(f"the LiteRT model differs from the SavedModel on {len(faces)} "
                            f"held-out faces: probabilities by up to {difference:.1e} (at most "
                            f"{TOLERANCE:.0e} accepted); nothing was exported")
    return {"faces": len(faces), "largest_difference": difference,
            "bytes": os.path.getsize(path), "saved_model_bytes": _folder_bytes(saved_model_dir,
                                                                                except_file=path),
            "seconds_per_image": _seconds_per_image({"saved_model": saved, "litert": lite},
                                                    faces)}


def _saved_model_runner(saved_model_dir, signature):
    """faces -> the signature's outputs as numpy arrays, through tf.saved_model.load."""
    function = tf.saved_model.load(saved_model_dir).signatures[signature]
    (name,) = function.structured_input_signature[1]
    return lambda faces: {key: value.numpy()
                          for key, value in function(**{name: tf.constant(faces)}).items()}


def _litert_runner(path, signature):
    """faces -> the signature's outputs, through the LiteRT runtime's interpreter."""
    from ai_edge_litert import interpreter  # only --litert needs the runtime

    runner = interpreter.Interpreter(model_path=path).get_signature_runner(signature)
    (name,) = runner.get_input_details()
    return lambda faces: runner(**{name: faces})


def _seconds_per_image(runners, faces):
    """{name: the median time of a call on one face} (what a client predicting one photo
    waits), the runners called in turn on the same face so that both see the same load."""
    for face in faces[:WARM_UP_CALLS]:
        for run in runners.values():
            run(face[None])
    times = {name: [] for name in runners}
    for index in range(TIMED_CALLS):
        face = faces[index % len(faces)][None]
        for name, run in runners.items():
            start = time.perf_counter()
            run(face)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _folder_bytes(folder, except_file):
    return sum(os.path.getsize(os.path.join(parent, name))
               for parent, _, names in os.walk(folder) for name in names
               if os.path.join(parent, name) != except_file)


def describe(report, path):
    """Lines of text of a report of write_and_check(), for the LiteRT model at `path`."""
    seconds = report["seconds_per_image"]
    return [f"LiteRT model: {path}, {report['bytes'] / 1e6:.2f} MB (the SavedModel beside it: "
            f"{report['saved_model_bytes'] / 1e6:.2f} MB)",
            f"largest probability difference against the SavedModel on {report['faces']} "
            f"held-out faces: {report['largest_difference']:.1e} (at most {TOLERANCE:.0e})",
            f"one face per call, median of {TIMED_CALLS} on this CPU: SavedModel "
            f"{seconds['saved_model'] * 1e3:.2f} ms, LiteRT {seconds['litert'] * 1e3:.2f} ms "
            f"(LiteRT {seconds['saved_model'] / seconds['litert']:.1f}x as fast)"]
