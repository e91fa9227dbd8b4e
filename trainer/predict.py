"""Predicts the age group (or gender) of face images with an exported SavedModel.

  python -m trainer.predict --saved_model=runs/lh/export face1.jpg faces/ ...
  python -m trainer.predict --saved_model=runs/lh/export --json faces/ > predictions.jsonl

Input: face crops like Adience's aligned faces (one face, roughly centred and upright, any
size, JPEG/PNG/BMP/GIF). Face detection is not part of it yet: a whole photo gives a
meaningless answer. A folder stands for the files in it (sorted, not recursive).

One line per image: the group, its probability and the top 3; or a JSON object per line with
--json. A file that is not a readable image gets an error line and the others go on; the exit
code is 1 if any failed, else 0.
"""

import json
import os
import sys

from absl import app
from absl import flags
import tensorflow as tf

flags.DEFINE_string("saved_model", None, "A SavedModel written by trainer.export.")
flags.DEFINE_bool("json", False, "One JSON object per image instead of text.")
flags.DEFINE_integer("batch_size", 32, "Images per call of the model.")
FLAGS = flags.FLAGS
TOP = 3


def image_files(paths):
    """The files named, a folder standing for its files; a missing path is an error entry."""
    for path in paths:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if os.path.isfile(os.path.join(path, name)):
                    yield os.path.join(path, name)
        else:
            yield path


def read_image(path):
    """The file's bytes if TensorFlow decodes them as an image, else (None, the reason).

    One undecodable string fails a whole SavedModel call, so every file is checked alone
    before it joins a batch.
    """
    try:
        with open(path, "rb") as f:
            encoded = f.read()
        tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return encoded, None
    except OSError as error:
        return None, error.strerror or str(error)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
        # TF's message: "{{function_node ...}} Unknown image file format. ... [Op:DecodeImage]"
        reason = error.message.split("}} ")[-1].split(" [Op:")[0]
        return None, f"not a readable image ({reason})"


def predict(serve, class_names, paths, batch_size):
    """Yields one result dict per path, in order: prediction or error."""
    pending = []

    def flush():
        outputs = serve(image_bytes=tf.constant([encoded for _, encoded in pending]))
        for (path, _), probabilities in zip(pending, outputs["probabilities"].numpy()):
            ranked = probabilities.argsort()[::-1][:TOP]
            yield {"file": path, "label": class_names[ranked[0]],
                   "probability": float(probabilities[ranked[0]]),
                   "top": [[class_names[i], float(probabilities[i])] for i in ranked]}
        pending.clear()

    for path in paths:
        encoded, error = read_image(path)
        if error:
            yield from flush() if pending else ()
            yield {"file": path, "error": error}
            continue
        pending.append((path, encoded))
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def describe(result):
    if "error" in result:
        return f"{result['file']}: error: {result['error']}"
    top = ", ".join(f"{label} {p:.2f}" for label, p in result["top"])
    return f"{result['file']}: {result['label']} ({result['probability']:.2f}); top {TOP}: {top}"


def main(argv):
    paths = argv[1:]
    if not FLAGS.saved_model or not paths:
        raise app.UsageError("usage: python -m trainer.predict --saved_model=DIR IMAGE|DIR ...")
    model = tf.saved_model.load(FLAGS.saved_model)
    class_names = [name.decode() for name in model.class_names.numpy()]
    failed = 0
    for result in predict(model.signatures["serving_default"], class_names,
                          image_files(paths), FLAGS.batch_size):
        failed += "error" in result
        print(json.dumps(result) if FLAGS.json else describe(result), flush=True)
    if failed:
        print(f"{failed} file(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)
