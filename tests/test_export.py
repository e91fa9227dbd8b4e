"""trainer.export and trainer.predict: a SavedModel that takes image bytes, serves what
evaluation computes, loads without the project, and a predict command that survives bad files;
user mistakes and disk faults of both are one error line, and a failed export leaves nothing."""

import contextlib
import errno
import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_CROP_SIZE, TINY_RECORD_SIZE, VENV_BIN, json_lines, run, train
from input import images
from input import schema
from launch import entry
from trainer import checkpoint as checkpoint_lib
from trainer.serving import litert
from trainer.serving import predict as serving_predict
from trainer.serving import saved_model

TRAIN = ["--model=tiny", f"--crop_size={TINY_CROP_SIZE}", "--batch_size=16",
         "--learning_rate=0.05", "--steps=3"]


@pytest.fixture(scope="module")
def trained(python, raw_records, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("job")
    train(python, model_dir, raw_records, *TRAIN)
    return model_dir


def export(python, model_dir, export_dir, *flags):
    return run([python, "-m", "trainer.export", f"--model_dir={model_dir}",
                f"--export_dir={export_dir}", *flags])


@pytest.fixture(scope="module")
def exported(python, trained, tmp_path_factory):
    """Two exports to one --export_dir, its versions 1 and 2: 1 crop, then 10 crops with
    --litert. {crops: the version folder, "base": the --export_dir, "stdout": {crops: ...}}."""
    base = tmp_path_factory.mktemp("export") / "agenet"
    exports = {"base": base, "stdout": {}}
    for crops, flags in ((1, ()), (10, ("--litert",))):
        result = export(python, trained, base, f"--eval_crops={crops}", *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        exports["stdout"][crops] = result.stdout
        exports[crops] = pathlib.Path(json_lines(result.stdout)[-1]["saved_model"])
    return exports


def evaluation_path(model_dir, records, crops):
    """{source file: probabilities} as evaluation computes them on the held-out records."""
    run_info = checkpoint_lib.read_run(str(model_dir))
    model = checkpoint_lib.load_model(
        run_info, tf.train.latest_checkpoint(f"{model_dir}/checkpoints"))
    results = {}
    for serialized in tf.data.TFRecordDataset(sorted(map(str, records.glob("fold0-*")))):
        example = schema.parse(serialized, "raw", TINY_RECORD_SIZE)
        filename = tf.io.parse_single_example(serialized, schema.FEATURES)["image/filename"]
        image = example["image"]
        if crops == 1:
            offset = images.center_offset(image, TINY_CROP_SIZE)
            windows = images.crop(image, offset, TINY_CROP_SIZE)[None]
            offsets, flips = offset[None], tf.constant([False])
        else:
            windows, offsets, flips = images.ten_crops(image, TINY_CROP_SIZE)
        logits = model({"image": windows, "crop_offset": offsets, "flip": flips})
        results[filename.numpy().decode()] = tf.reduce_mean(tf.nn.softmax(logits), 0).numpy()
    return results


@pytest.mark.parametrize("crops", [1, 10])
def test_exported_model_predicts_what_evaluation_computes(trained, raw_records, exported,
                                                          synthetic_tree, crops):
    """Both signatures: JPEG bytes, and the same faces decoded to the records' size."""
    expected = evaluation_path(trained, raw_records, crops)
    signatures = tf.saved_model.load(str(exported[crops])).signatures
    files = sorted(expected)
    encoded = [(synthetic_tree / name).read_bytes() for name in files]
    served = signatures["serving_default"](image_bytes=tf.constant(encoded))
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               np.stack([expected[f] for f in files]), atol=1e-5)
    pixels = tf.stack([images.decode_and_resize(face, TINY_RECORD_SIZE) for face in encoded])
    from_pixels = signatures["serving_pixels"](images=pixels)
    np.testing.assert_allclose(from_pixels["probabilities"].numpy(),
                               served["probabilities"].numpy(), atol=1e-6)
    assert from_pixels["label"].numpy().tolist() == served["label"].numpy().tolist()


LOAD_WITHOUT_PROJECT = """
import io, json, sys
import numpy as np
import tensorflow as tf
from PIL import Image
loaded = tf.saved_model.load(sys.argv[1])
serve = loaded.signatures["serving_default"]
def encoded(size, fmt):
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, size[::-1] + (3,), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()
batch = [encoded((300, 200), "PNG"), encoded((40, 90), "JPEG"), encoded((640, 640), "PNG")]
out = serve(image_bytes=tf.constant(batch))
print(json.dumps({"sums": out["probabilities"].numpy().sum(axis=1).tolist(),
                  "labels": [label.decode() for label in out["label"].numpy()],
                  "class_names": [n.decode() for n in loaded.class_names.numpy()],
                  "metadata": json.loads(loaded.metadata.numpy()),
                  "project": sorted(m for m in sys.modules if m.split(".")[0] in
                                    ("trainer", "input", "launch"))}))
"""


def test_saved_model_loads_without_the_project_and_serves_any_size_and_png(python, exported,
                                                                            tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([python, "-c", LOAD_WITHOUT_PROJECT, str(exported[1])],
                            cwd=tmp_path, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json_lines(result.stdout)[-1]
    assert report["project"] == []
    np.testing.assert_allclose(report["sums"], [1, 1, 1], atol=1e-5)
    assert set(report["labels"]) <= set(report["class_names"])
    assert report["class_names"][4] == "25-32"
    metadata = report["metadata"]
    assert metadata["model"] == "tiny" and metadata["step"] == 3
    assert metadata["held_out_fold"] == 0 and metadata["eval"]["examples"] > 0


def test_tensorflows_own_loader_serves_it_as_tf_serving_would(trained, exported,
                                                               synthetic_tree, tmp_path):
    """saved_model_cli runs the C++ session loader that TF Serving uses: it finds every
    variable, and both signatures are listed as clients see them."""
    cli = VENV_BIN / "saved_model_cli"
    shown = run([cli, "show", "--dir", exported[1], "--all"]).stdout
    default = shown.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    inputs, outputs = default.split("output(s):")
    assert "inputs['image_bytes']" in inputs and "DT_STRING" in inputs and "(-1)" in inputs
    for name, dtype in (("probabilities", "DT_FLOAT"), ("class_id", "DT_INT64"),
                        ("label", "DT_STRING")):
        assert f"outputs['{name}']" in outputs
        assert dtype in outputs.split(f"outputs['{name}']")[1].split("name:")[0]
    pixels = shown.split("signature_def['serving_pixels']")[1].split("output(s):")[0]
    assert "inputs['images']" in pixels and "DT_UINT8" in pixels
    assert f"(-1, {TINY_RECORD_SIZE}, {TINY_RECORD_SIZE}, 3)" in pixels

    # Each weight is stored once: the tracked tf.Variables, not the Keras wrappers as well.
    saved = tf.train.list_variables(str(exported[1] / "variables" / "variables"))
    model = checkpoint_lib.load_model(checkpoint_lib.read_run(str(trained)),
                                      tf.train.latest_checkpoint(f"{trained}/checkpoints"))
    assert sorted(tuple(shape) for name, shape in saved if name.startswith("tf_variables/")) == (
        sorted(tuple(variable.shape) for variable in model.variables))
    assert len(saved) == len(model.variables) + 3  # + class names, metadata, the object graph

    faces = sorted((synthetic_tree / "aligned").rglob("*.jpg"))[:4]
    np.save(tmp_path / "faces.npy", np.array([face.read_bytes() for face in faces]))  # |S
    result = run([cli, "run", "--dir", exported[1], "--tag_set", "serve", "--signature_def",
                  "serving_default", "--inputs", f"image_bytes={tmp_path / 'faces.npy'}",
                  "--outdir", tmp_path / "out"])
    assert result.returncode == 0, result.stderr[-3000:]
    serve = tf.saved_model.load(str(exported[1])).signatures["serving_default"]
    expected = serve(image_bytes=tf.constant([face.read_bytes() for face in faces]))
    np.testing.assert_allclose(np.load(tmp_path / "out" / "probabilities.npy"),
                               expected["probabilities"].numpy(), atol=1e-5)


def test_predict_reports_a_bad_file_and_goes_on(python, exported, synthetic_tree, tmp_path):
    faces = sorted((synthetic_tree / "aligned").rglob("*.jpg"))[:3]
    folder = tmp_path / "faces"
    folder.mkdir()
    for face in faces:
        (folder / face.name).write_bytes(face.read_bytes())
    (folder / "0-corrupt.jpg").write_bytes(faces[0].read_bytes()[:100])
    (folder / "notes.txt").write_text("not an image")
    result = run([python, "-m", "trainer.predict", f"--saved_model={exported[1]}", "--json",
                  "--images_per_call=2", folder, tmp_path / "missing.png"])
    assert result.returncode == 1
    lines = json_lines(result.stdout)
    assert [os.path.basename(line["file"]) for line in lines] == (
        ["0-corrupt.jpg"] + [face.name for face in faces] + ["notes.txt", "missing.png"])
    errors = {os.path.basename(line["file"]): line["error"] for line in lines if "error" in line}
    assert set(errors) == {"0-corrupt.jpg", "notes.txt", "missing.png"}
    assert "not a readable image" in errors["notes.txt"]
    predicted = [line for line in lines if "label" in line]
    assert len(predicted) == 3 and all(len(line["top"]) == 3 for line in predicted)

    # An export's base folder stands for its highest version, as in TF Serving.
    text = run([python, "-m", "trainer.predict", f"--saved_model={exported['base']}", faces[0]])
    assert text.returncode == 0 and "top 3:" in text.stdout
    assert serving_predict.version_to_load(str(exported["base"])) == str(exported[10])


def test_exporting_a_checkpoint_of_another_model_is_a_clear_error(python, trained,
                                                                  raw_records, tmp_path):
    train(python, tmp_path / "other", raw_records, *TRAIN, "--model=resnet", "--steps=1")
    result = export(python, trained, tmp_path / "export",
                    f"--checkpoint={tmp_path / 'other/checkpoints/ckpt-1'}")
    assert result.returncode == 2
    assert "is not a checkpoint of a tiny model for age" in result.stderr
    assert not (tmp_path / "export").exists()


def assert_one_error(result, exit_code, *named):
    """A user mistake or a fault: the exit code, exactly one `error:` line on stderr (TF's own
    start-up lines may precede it) naming each of `named`, and no traceback; returns the line."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in named:
        assert str(text) in errors[0], errors[0]
    return errors[0]


@contextlib.contextmanager
def mounted(directory, options):
    """A tmpfs mounted at `directory` with `options` ("ro", "size=64k"), unmounted after; the
    test is skipped where it cannot be mounted (not root: chmod does not stop root)."""
    directory.mkdir()
    if os.geteuid() != 0 or run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                                 directory]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield directory
    finally:
        run(["umount", directory])


def test_a_job_folder_and_an_export_dir_are_required(python, tmp_path):
    result = export(python, tmp_path, tmp_path / "export")
    assert_one_error(result, 2, f"{tmp_path}")
    assert not (tmp_path / "export").exists()
    no_export_dir = run([python, "-m", "trainer.export", f"--model_dir={tmp_path}"])
    assert_one_error(no_export_dir, 2, "--export_dir")


def test_each_export_is_the_next_version_and_none_is_overwritten(python, trained, exported):
    """TF Serving's layout: --export_dir is the base and exports are its versions 1, 2, ..."""
    base = exported["base"]
    assert [exported[1], exported[10]] == [base / "1", base / "2"]
    assert sorted(path.name for path in base.iterdir()) == ["1", "2"]
    assert f"1 crop(s)) to {base / '1'}" in exported["stdout"][1]
    for crops in (1, 10):
        metadata = json.loads((exported[crops] / "assets.extra/agenet.json").read_text())
        assert metadata["crops"] == crops and metadata["record_size"] == TINY_RECORD_SIZE
    before = sorted(path.name for path in exported[1].iterdir())
    assert_one_error(export(python, trained, exported[1]), 2, exported[1], "is a SavedModel")
    assert sorted(path.name for path in exported[1].iterdir()) == before


def test_litert_model_runs_in_the_litert_runtime_as_the_saved_model(exported, synthetic_tree):
    from ai_edge_litert import interpreter

    report = json_lines(exported["stdout"][10])[-1]["litert"]
    assert report["faces"] == litert.FACES and report["largest_difference"] < litert.TOLERANCE
    assert set(report["seconds_per_image"]) == {"saved_model", "litert"}
    assert "largest probability difference against the SavedModel" in exported["stdout"][10]
    assert not (exported[1] / litert.FILE).exists()  # only with --litert

    faces = sorted((synthetic_tree / "aligned").rglob("*.jpg"))[:5]
    pixels = np.stack([images.decode_and_resize(face.read_bytes(), TINY_RECORD_SIZE).numpy()
                       for face in faces])
    runner = interpreter.Interpreter(model_path=str(exported[10] / litert.FILE)
                                     ).get_signature_runner("serving_pixels")
    lite = runner(images=pixels)
    saved = tf.saved_model.load(str(exported[10])).signatures["serving_pixels"](
        images=tf.constant(pixels))
    np.testing.assert_allclose(lite["probabilities"], saved["probabilities"].numpy(),
                               atol=litert.TOLERANCE)
    class_names = [name.encode() for name in json.loads(
        (exported[10] / "assets.extra/agenet.json").read_text())["class_names"]]
    assert lite["class_id"].tolist() == lite["probabilities"].argmax(axis=1).tolist()
    assert lite["label"].tolist() == [class_names[i] for i in lite["class_id"]]


def test_a_litert_model_that_disagrees_fails_the_export_and_leaves_nothing(trained, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(litert, "TOLERANCE", -1.0)  # any difference is too large
    with pytest.raises(entry.Failure, match="LiteRT model differs") as error:
        saved_model.export(str(trained), str(tmp_path / "export"), with_litert=True)
    assert error.value.exit_code == entry.FAULT_EXIT_CODE
    assert list(tmp_path.iterdir()) == []


def test_litert_without_the_jobs_records_is_refused_before_any_work(trained, tmp_path):
    job = tmp_path / "job"
    shutil.copytree(trained, job)
    run_json = json.loads((job / "run.json").read_text())
    (job / "run.json").write_text(json.dumps({**run_json, "records": str(tmp_path / "gone")}))
    with pytest.raises(entry.UserError, match="--litert") as error:
        saved_model.export(str(job), str(tmp_path / "export"), with_litert=True)
    assert str(tmp_path / "gone") in str(error.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["job"]


@pytest.mark.parametrize("where, cause", [("file", "is a file"),
                                          ("under_a_file", "not a directory")])
def test_an_export_dir_that_is_a_file_or_under_one_is_refused(python, trained, tmp_path, where,
                                                              cause):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's")
    export_dir = a_file if where == "file" else a_file / "export"
    assert_one_error(export(python, trained, export_dir), 2, export_dir, cause)
    assert a_file.read_text() == "the user's"
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_a_read_only_export_dir_is_refused_before_any_work(python, trained, tmp_path):
    with mounted(tmp_path / "read_only", "ro,size=1m") as read_only:
        export_dir = read_only / "models" / "export"
        assert_one_error(export(python, trained, export_dir), 2, export_dir,
                         "read-only file system")
        assert list(read_only.iterdir()) == []


def test_a_read_only_export_dir_is_refused_injected(trained, tmp_path, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(os, "makedirs", read_only)
    export_dir = tmp_path / "export"
    with pytest.raises(entry.UserError, match="read-only file system") as error:
        saved_model.export(str(trained), str(export_dir))
    assert str(export_dir) in str(error.value)
    assert error.value.exit_code == entry.USAGE_EXIT_CODE
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_the_export_leaves_nothing(python, trained, tmp_path):
    with mounted(tmp_path / "small", "size=64k") as small:
        export_dir = small / "export"
        assert_one_error(export(python, trained, export_dir), 1, export_dir,
                         "no space left on device")
        assert list(small.iterdir()) == []


@pytest.mark.parametrize("fault", [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "saved_model.pb"),
    tf.errors.ResourceExhaustedError(None, None, "variables/variables.index; No space left on "
                                     "device [Op:MergeV2Checkpoints]"),
], ids=["OSError", "TensorFlow"])
def test_a_full_disk_during_the_export_leaves_nothing_injected(trained, tmp_path, monkeypatch,
                                                               fault):
    def half_saved(module, export_dir, signatures):
        os.makedirs(os.path.join(export_dir, "variables"))
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise fault

    monkeypatch.setattr(tf.saved_model, "save", half_saved)
    export_dir = tmp_path / "models" / "export"
    with pytest.raises(entry.Failure, match="no space left on device") as error:
        saved_model.export(str(trained), str(export_dir))
    assert str(export_dir) in str(error.value)
    assert error.value.exit_code == entry.FAULT_EXIT_CODE
    assert list(tmp_path.iterdir()) == []  # nor the folder the export created for it


def test_what_a_killed_export_left_is_removed_and_nothing_else(python, trained, tmp_path):
    ended = subprocess.Popen(["true"])
    ended.wait()
    base = tmp_path / "export"
    left = pathlib.Path(saved_model.temporary_name(str(base), ended.pid))
    (left / "variables").mkdir(parents=True)
    (left / "saved_model.pb").write_bytes(b"half")
    (base / "3").mkdir()  # a version from elsewhere: the next one is 4
    for name in (".tmp-notes", ".tmp-1.bak"):
        (base / name).write_text("the user's")
    result = export(python, trained, base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in base.iterdir()) == [".tmp-1.bak", ".tmp-notes", "3",
                                                            "4"]


def predict(python, saved_model_dir, *args):
    return run([python, "-m", "trainer.predict", f"--saved_model={saved_model_dir}", *args])


def test_predict_on_a_folder_without_images_is_an_error(python, exported, synthetic_tree,
                                                        tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_error(predict(python, exported[1], empty), 1, f"no images in {empty}")
    face = sorted((synthetic_tree / "aligned").rglob("*.jpg"))[0]
    mixed = predict(python, exported[1], "--json", empty, face)
    assert mixed.returncode == 1
    lines = json_lines(mixed.stdout)
    assert lines[0] == {"file": str(empty), "error": "no images in this folder"}
    assert lines[1]["file"] == str(face) and "label" in lines[1]


@pytest.mark.parametrize("case", ["missing", "empty_folder", "a_file", "damaged"])
def test_predict_refuses_a_saved_model_that_is_not_one(python, synthetic_tree, tmp_path, case):
    path = tmp_path / "model"
    if case == "a_file":
        path.write_text("not a model")
    elif case != "missing":
        path.mkdir()
    if case == "damaged":
        (path / "saved_model.pb").write_bytes(b"not a protocol buffer")
    face = sorted((synthetic_tree / "aligned").rglob("*.jpg"))[0]
    assert_one_error(predict(python, path, face), 2, f"--saved_model {path}")


def test_predict_needs_a_saved_model_and_a_file(python, exported, synthetic_tree):
    face = sorted((synthetic_tree / "aligned").rglob("*.jpg"))[0]
    assert_one_error(run([python, "-m", "trainer.predict", face]), 2, "--saved_model")
    assert_one_error(run([python, "-m", "trainer.predict", f"--saved_model={exported[1]}"]), 2,
                     "IMAGE")


def test_predict_batch_size_is_the_old_name_of_images_per_call(python, exported,
                                                               synthetic_tree):
    faces = sorted((synthetic_tree / "aligned").rglob("*.jpg"))[:3]
    new = predict(python, exported[1], "--json", "--images_per_call=2", *faces)
    old = predict(python, exported[1], "--json", "--batch_size=2", *faces)
    assert new.returncode == 0 and old.returncode == 0, old.stderr[-3000:]
    assert json_lines(old.stdout) == json_lines(new.stdout)
    pointers = [line for line in old.stderr.splitlines() if "--images_per_call" in line]
    assert len(pointers) == 1 and "--batch_size" in pointers[0]
    assert not [line for line in new.stderr.splitlines() if "--batch_size" in line]
    both = predict(python, exported[1], "--batch_size=2", "--images_per_call=2", faces[0])
    assert_one_error(both, 2, "--images_per_call")
