"""Shared helpers: run the project's entry points as subprocesses, as a user would."""

import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from launch import host

REPO = pathlib.Path(__file__).resolve().parents[1]
# The real Adience fold files (metadata, no images), kept in the repository: tests/data/adience.
REAL_FOLDS = REPO / "tests" / "data" / "adience"
VENV_BIN = pathlib.Path(sys.executable).parent


def _environment(env):
    full_env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="1")
    full_env.pop("TF_CONFIG", None)
    full_env.update(env or {})
    return full_env


def run(args, env=None, timeout=300):
    """Runs a command from the repo root with the repo importable; returns CompletedProcess."""
    return subprocess.run([str(a) for a in args], cwd=REPO, env=_environment(env),
                          capture_output=True, text=True, timeout=timeout)


def train(python, model_dir, records, *flags):
    """Runs trainer.main on `records` to the end, asserting that it succeeded."""
    result = run([python, "-m", "trainer.main", f"--model_dir={model_dir}",
                  f"--records={records}", *flags])
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def start(args, env=None):
    """Starts a command as `run` does, without waiting (for processes that must meet)."""
    return subprocess.Popen([str(a) for a in args], cwd=REPO, env=_environment(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def multi_worker_environments(count):
    """TF_CONFIG environments of `count` workers on 127.0.0.1, one per process."""
    workers = [f"127.0.0.1:{port}" for port in host.free_ports(count)]
    return [{"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                      "task": {"type": "worker", "index": index}})}
            for index in range(count)]


class Watched:
    """A started process whose output is read as it comes, to act on what it logs."""

    def __init__(self, args, env=None):
        self.process = start(args, env)
        self.stdout, self.stderr = [], []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.stdout),
                                               (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines):
        for line in stream:
            lines.append(line)

    def records(self):
        return json_lines("".join(self.stdout))

    def wait_for(self, predicate, timeout=240):
        """Waits until predicate(self) holds; fails if the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            assert self.process.poll() is None, "".join(self.stdout + self.stderr)[-3000:]
            assert time.monotonic() < deadline, "".join(self.stdout + self.stderr)[-3000:]
            time.sleep(0.01)

    def finish(self, timeout=240):
        self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return self.process.returncode


def json_lines(text):
    """The JSON objects printed in a command's output (horovodrun prefixes each rank's lines)."""
    found = []
    for line in text.splitlines():
        start = line.find("{")
        if start >= 0:
            try:
                found.append(json.loads(line[start:]))
            except json.JSONDecodeError:
                pass
    return found


@pytest.fixture
def mixed_bfloat16():
    """Keras' global policy mixed_bfloat16 for one test, float32 again after it."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def python():
    return sys.executable


@pytest.fixture(scope="session")
def horovodrun():
    return VENV_BIN / "horovodrun"


def random_batch(rng, size, record_size, crop_size, num_classes=8):
    """A pipeline-like batch of random crops of record_size images, with labels."""
    return {
        "image": rng.integers(0, 256, (size, crop_size, crop_size, 3), dtype=np.uint8),
        "crop_offset": rng.integers(0, record_size - crop_size + 1, (size, 2)).astype(np.int32),
        "flip": rng.random(size) < 0.5,
        "label": rng.integers(0, num_classes, size).astype(np.int32),
    }


def training_losses(model, family, batch, steps, compiled=True, learning_rate=0.05):
    """The losses of `steps` SGD steps on one batch, with the model family's L2 term."""
    import keras
    import tensorflow as tf

    from input import batch as batch_lib
    from trainer import recipes

    features = batch_lib.inputs_of(batch)
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step():
        with tf.GradientTape() as tape:
            loss = cross_entropy(batch["label"], model(features, training=True))
            total = loss + recipes.l2_term(family.decay_variables(model), family.weight_decay)
        optimizer.apply_gradients(zip(tape.gradient(total, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    step = tf.function(step) if compiled else step
    return [float(step()) for _ in range(steps)]


# A small synthetic Adience tree and its records, built once for the session. Small images
# (records of 64x64, crops of 56) keep the suite fast; the code paths are the full-size ones.
TINY_RECORD_SIZE = 64
TINY_CROP_SIZE = 56


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory):
    from input import synthetic

    out = tmp_path_factory.mktemp("adience")
    synthetic.generate(str(out), subjects=10, seed=1, image_size=96, workers=2)
    return out


@pytest.fixture(scope="session")
def records(synthetic_tree, tmp_path_factory):
    """Records of the 5-fold protocol, JPEG, 2 shards per fold."""
    from input import build

    out = tmp_path_factory.mktemp("records")
    build.build(str(synthetic_tree), str(out), shards_per_split=2, workers=2,
                image_size=TINY_RECORD_SIZE)
    return out


@pytest.fixture(scope="session")
def raw_records(synthetic_tree, tmp_path_factory):
    """Raw-pixel records of the same tree, 1 shard per fold (so that 2 replicas or pipelines
    share the held-out fold's file record by record)."""
    from input import build

    out = tmp_path_factory.mktemp("raw_records")
    build.build(str(synthetic_tree), str(out), shards_per_split=1, workers=1,
                image_format="raw", image_size=TINY_RECORD_SIZE)
    return out


@pytest.fixture(scope="session")
def tiny_export(python, records, tmp_path_factory):
    """A SavedModel version folder (holding saved_model.pb) of the tiny model trained 3 steps
    on `records`: one export for every test that serves or predicts from one."""
    model_dir = tmp_path_factory.mktemp("tiny_job")
    train(python, model_dir, records, "--model=tiny", f"--crop_size={TINY_CROP_SIZE}",
          "--batch_size=16", "--learning_rate=0.05", "--steps=3")
    export_dir = tmp_path_factory.mktemp("tiny_export") / "agenet"
    result = run([python, "-m", "trainer.export", f"--model_dir={model_dir}",
                  f"--export_dir={export_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return next(export_dir.rglob("saved_model.pb")).parent


def assert_error_line(result, *needles, exit_code=2):
    """A user's mistake or a fault as users must see it: `exit_code`, exactly one stderr line
    starting with "error:" (TensorFlow's start-up lines may precede it) that holds every
    needle, and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]
