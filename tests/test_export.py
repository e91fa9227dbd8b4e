"""trainer.export and trainer.predict: a SavedModel that takes image bytes, serves what
evaluation computes, loads without the project, and a predict command that survives bad files."""

import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_CROP_SIZE, TINY_RECORD_SIZE, json_lines, run, train
from input import images
from input import schema
from trainer import checkpoint as checkpoint_lib

TRAIN = ["--model=tiny", f"--crop_size={TINY_CROP_SIZE}", "--batch_size=16",
         "--learning_rate=0.05", "--steps=3"]


@pytest.fixture(scope="module")
def raw_records(synthetic_tree, tmp_path_factory):
    """Raw-pixel records: the evaluation path sees exactly the pixels export computes."""
    from input import build

    out = tmp_path_factory.mktemp("raw_records")
    build.build(str(synthetic_tree), str(out), shards_per_split=1, workers=1,
                image_format="raw", image_size=TINY_RECORD_SIZE)
    return out


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
    exports = {}
    for crops in ("1", "10"):
        export_dir = tmp_path_factory.mktemp("export") / f"crops{crops}"
        result = export(python, trained, export_dir, f"--eval_crops={crops}")
        assert result.returncode == 0, result.stderr[-3000:]
        exports[int(crops)] = export_dir
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
    expected = evaluation_path(trained, raw_records, crops)
    serve = tf.saved_model.load(str(exported[crops])).signatures["serving_default"]
    files = sorted(expected)
    encoded = [(synthetic_tree / name).read_bytes() for name in files]
    served = serve(image_bytes=tf.constant(encoded))["probabilities"].numpy()
    np.testing.assert_allclose(served, np.stack([expected[f] for f in files]), atol=1e-5)


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


def test_saved_model_cli_lists_the_signature(exported):
    cli = os.path.join(os.path.dirname(os.sys.executable), "saved_model_cli")
    shown = run([cli, "show", "--dir", exported[1], "--tag_set", "serve",
                 "--signature_def", "serving_default"]).stdout
    inputs, outputs = shown.split("output(s):")
    assert "inputs['image_bytes']" in inputs and "DT_STRING" in inputs and "(-1)" in inputs
    for name, dtype in (("probabilities", "DT_FLOAT"), ("class_id", "DT_INT64"),
                        ("label", "DT_STRING")):
        assert f"outputs['{name}']" in outputs
        assert dtype in outputs.split(f"outputs['{name}']")[1].split("name:")[0]


def test_predict_reports_a_bad_file_and_goes_on(python, exported, synthetic_tree, tmp_path):
    faces = sorted((synthetic_tree / "aligned").rglob("*.jpg"))[:3]
    folder = tmp_path / "faces"
    folder.mkdir()
    for face in faces:
        (folder / face.name).write_bytes(face.read_bytes())
    (folder / "0-corrupt.jpg").write_bytes(faces[0].read_bytes()[:100])
    (folder / "notes.txt").write_text("not an image")
    result = run([python, "-m", "trainer.predict", f"--saved_model={exported[1]}", "--json",
                  "--batch_size=2", folder, tmp_path / "missing.png"])
    assert result.returncode == 1
    lines = json_lines(result.stdout)
    assert [os.path.basename(line["file"]) for line in lines] == (
        ["0-corrupt.jpg"] + [face.name for face in faces] + ["notes.txt", "missing.png"])
    errors = {os.path.basename(line["file"]): line["error"] for line in lines if "error" in line}
    assert set(errors) == {"0-corrupt.jpg", "notes.txt", "missing.png"}
    assert "not a readable image" in errors["notes.txt"]
    predicted = [line for line in lines if "label" in line]
    assert len(predicted) == 3 and all(len(line["top"]) == 3 for line in predicted)

    text = run([python, "-m", "trainer.predict", f"--saved_model={exported[1]}", faces[0]])
    assert text.returncode == 0 and "top 3:" in text.stdout


def test_exporting_a_checkpoint_of_another_model_is_a_clear_error(python, trained,
                                                                  raw_records, tmp_path):
    train(python, tmp_path / "other", raw_records, *TRAIN, "--model=resnet", "--steps=1")
    result = export(python, trained, tmp_path / "export",
                    f"--checkpoint={tmp_path / 'other/checkpoints/ckpt-1'}")
    assert result.returncode == 2
    assert "is not a checkpoint of a tiny model for age" in result.stderr
    assert not (tmp_path / "export").exists()
