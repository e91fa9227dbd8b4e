"""Predictions of an exported SavedModel on image files: listed, read, batched, described.

Input: face crops like Adience's aligned faces (one face, roughly centred and upright, any
size, JPEG/PNG/BMP/GIF); or, with a face detector, whole photos, each face found aligned as
those are (trainer/serving/faces.py) and predicted on its own. A folder stands for the files in
it (sorted, not recursive). Each file is checked on its own before it joins a batch: one
undecodable string fails a whole call of the SavedModel.
"""

import os

import tensorflow as tf

from launch import entry
from trainer.serving import faces
from trainer.serving import saved_model as saved_model_lib

TOP = 3  # classes shown per image
SIGNATURE = saved_model_lib.BYTES_SIGNATURE
NO_IMAGES = "no images in this folder"
NO_FACE = "no face found"


def version_to_load(saved_model):
    """The SavedModel folder that --saved_model names: itself, or the highest version in it
    when it is an export's base folder (trainer.export's and TF Serving's layout, BASE/<n>)."""
    if not os.path.isdir(saved_model) or saved_model_lib.is_saved_model(saved_model):
        return saved_model
    numbered = [os.path.join(saved_model, str(version))
                for version in saved_model_lib.versions(saved_model)]
    loadable = [folder for folder in numbered if saved_model_lib.is_saved_model(folder)]
    return loadable[-1] if loadable else saved_model


def check_saved_model(saved_model):
    """entry.UserError, before TensorFlow loads anything, for a path that is not a SavedModel
    or the base folder of one."""
    if not os.path.isdir(saved_model):
        cause = "is a file, not a folder" if os.path.lexists(saved_model) else "not found"
        raise entry.UserError(f"--saved_model {saved_model}: {cause}")
    if not saved_model_lib.is_saved_model(version_to_load(saved_model)):
        raise entry.UserError(f"--saved_model {saved_model} is not a SavedModel (no "
                              f"{saved_model_lib.SAVED_MODEL_FILES[0]} in it or in a numbered "
                              f"version folder): give a folder written by trainer.export")


def load(saved_model):
    """(the serving function, its class names) of a SavedModel written by trainer.export, or of
    the highest version in its base folder, once check_saved_model() has passed."""
    model = load_module(saved_model)
    return model.signatures[SIGNATURE], class_names_of(model)


def load_module(saved_model):
    """The loaded SavedModel (all its signatures) that load() serves from."""
    saved_model = version_to_load(saved_model)
    try:
        model = tf.saved_model.load(saved_model)
    except (OSError, ValueError, tf.errors.OpError) as error:  # a damaged saved_model.pb
        raise entry.UserError(f"--saved_model {saved_model} cannot be loaded: "
                              f"{str(error).strip().splitlines()[0]}") from None
    if SIGNATURE not in model.signatures or not hasattr(model, "class_names"):
        raise entry.UserError(f"--saved_model {saved_model} is a SavedModel but not one written "
                              f"by trainer.export (no {SIGNATURE} signature or class names)")
    return model


def class_names_of(model):
    return [name.decode() for name in model.class_names.numpy()]


def image_files(paths):
    """[(path, None)] for each file named and each file in a folder named; a folder with no file
    in it is (folder, NO_IMAGES). entry.Failure when there is no file at all."""
    listed = []
    for path in paths:
        if os.path.isdir(path):
            inside = [os.path.join(path, name) for name in sorted(os.listdir(path))]
            files = [name for name in inside if os.path.isfile(name)]
            listed += [(name, None) for name in files] or [(path, NO_IMAGES)]
        else:
            listed.append((path, None))  # a missing file is reported when it is read
    if all(reason == NO_IMAGES for _, reason in listed):
        raise entry.Failure(f"no images in {', '.join(paths)}")
    return listed


def read_image(path):
    """The file's bytes if TensorFlow decodes them as an image, else (None, the reason)."""
    try:
        with open(path, "rb") as f:
            encoded = f.read()
        faces.open_photo(encoded)  # refuses a decompression bomb from its header
        tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return encoded, None
    except OSError as error:
        return None, error.strerror or str(error)
    except faces.PhotoError as error:
        return None, str(error)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
        # TF's message: "{{function_node ...}} Unknown image file format. ... [Op:DecodeImage]"
        reason = error.message.split("}} ")[-1].split(" [Op:")[0]
        return None, f"not a readable image ({reason})"


def predict(serve, class_names, listed, images_per_call, detector=None):
    """Yields one result dict per entry of image_files(), in order: a prediction or an error.
    With a faces.Detector, each file is a whole photo: one prediction per face found in it (its
    place in the photo added), or an error when there is none."""
    pending = []

    def flush():
        outputs = serve(image_bytes=tf.constant([encoded for _, encoded in pending]))
        for (about, _), probabilities in zip(pending, outputs["probabilities"].numpy()):
            yield {**about, **answer(probabilities, class_names)}
        pending.clear()

    for path, error in listed:
        inputs, error = (None, error) if error else _inputs(path, detector)
        if error:
            yield from flush() if pending else ()
            yield {"file": path, "error": error}
            continue
        for item in inputs:
            pending.append(item)
            if len(pending) == images_per_call:
                yield from flush()
    if pending:
        yield from flush()


def answer(probabilities, class_names):
    """What a prediction says of one image: its label, probability and the top TOP classes."""
    ranked = probabilities.argsort()[::-1][:TOP]
    return {"label": class_names[ranked[0]], "probability": float(probabilities[ranked[0]]),
            "top": [[class_names[i], float(probabilities[i])] for i in ranked]}


def _inputs(path, detector):
    """([(what a result says of an image, its encoded bytes)], None) for the file at `path`: the
    file itself, or each face found in it; or (None, why not)."""
    if detector is None:
        encoded, error = read_image(path)
        return (None, error) if error else ([({"file": path}, encoded)], None)
    try:
        with open(path, "rb") as f:
            found = detector.find(f.read())
    except OSError as error:
        return None, error.strerror or str(error)
    except faces.PhotoError as error:
        return None, str(error)
    if not found:
        return None, NO_FACE
    return [({"file": path, "face": number, "faces": len(found), **face.description()},
             faces.encode(face.crop)) for number, face in enumerate(found, 1)], None


def describe(result):
    """One line of text of a result of predict()."""
    if "error" in result:
        return f"{result['file']}: error: {result['error']}"
    top = ", ".join(f"{label} {p:.2f}" for label, p in result["top"])
    return (f"{result['file']}:{_place(result)} {result['label']} "
            f"({result['probability']:.2f}); top {TOP}: {top}")


def _place(result):
    """A face's place in its text line (" face 1 of 2 (box X,Y WxH; left_eye X,Y, ...):"), or ""
    for a whole image."""
    if "face" not in result:
        return ""
    x, y, width, height = result["box"]
    points = ", ".join(f"{name} {px:.0f},{py:.0f}" for name, (px, py) in
                       result["landmarks"].items())
    return (f" face {result['face']} of {result['faces']} (box {x:.0f},{y:.0f} "
            f"{width:.0f}x{height:.0f}; {points}):")
