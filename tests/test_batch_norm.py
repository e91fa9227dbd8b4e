"""Batch norm over several replicas, as users run trainer.main: synchronized by default, so that
mirrored over 4 logical CPUs and 2 Horovod ranks train what one device trains on the global
batch (weights, optimizer state and moving statistics); per replica with --batch_norm=local;
and the rule for --xla."""

import numpy as np
import pytest

from conftest import TINY_CROP_SIZE, assert_error_line, json_lines, run
from test_trainer import checkpoint_values, horovod, trainer

# Relative: moving variances of unnormalised convolutions run into the thousands.
AGREEMENT = 1e-5
# Same global batches for every strategy (synthetic data), no dropout: the comparison is exact
# up to float rounding.
BATCH_NORM_JOB = ["--model=levi_hassner_bn", f"--crop_size={TINY_CROP_SIZE}", "--batch_size=16",
                  "--learning_rate=0.05", "--weight_decay=0", "--data=synthetic", "--dropout=0",
                  "--steps=3", "--log_every=1", "--seed=3"]


def largest_relative_difference(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]) / (1 + np.abs(b[k]))))
               for k in a)


def moving_statistics(values):
    # The model's non-trainable state, listed in the checkpoint: the mean image (unchanged
    # here) and each batch-norm layer's moving mean and variance.
    return {name: value for name, value in values.items() if name.startswith("model_state/")}


def losses(output):
    return [record["train/loss"] for record in json_lines(output) if "train/loss" in record]


@pytest.fixture(scope="module")
def one_device(python, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("one_device")
    result = run(trainer(python, model_dir, "--strategy=one_device", *BATCH_NORM_JOB))
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, losses(result.stdout)


@pytest.mark.parametrize("strategy", ["mirrored", "horovod"])
def test_synchronized_batch_norm_trains_what_one_device_trains(python, horovodrun, tmp_path,
                                                               one_device, strategy):
    if strategy == "mirrored":
        command = trainer(python, tmp_path, "--strategy=mirrored", "--logical_cpus=4",
                          *BATCH_NORM_JOB)
    else:
        command = horovod(horovodrun, trainer(python, tmp_path, *BATCH_NORM_JOB))
    result = run(command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reference_dir, reference_losses = one_device
    reference = checkpoint_values(reference_dir)
    values = checkpoint_values(tmp_path)
    assert len(moving_statistics(values)) == 1 + 2 * 3  # the mean, 3 layers' statistics
    assert largest_relative_difference(values, reference) <= AGREEMENT
    np.testing.assert_allclose(losses(result.stdout), reference_losses, rtol=1e-5)


def test_local_batch_norm_compiles_and_normalises_each_replicas_slice(python, tmp_path,
                                                                      one_device):
    """Per-replica batch norm compiles with --xla over several replicas, and it trains
    another model than one device: what the agreement above would catch."""
    result = run(trainer(python, tmp_path, "--strategy=mirrored", "--logical_cpus=4",
                         "--batch_norm=local", "--xla", *BATCH_NORM_JOB),
                 env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Compiled cluster using XLA" in result.stderr
    reference = checkpoint_values(one_device[0])
    values = moving_statistics(checkpoint_values(tmp_path))
    assert largest_relative_difference(values, moving_statistics(reference)) > 100 * AGREEMENT


@pytest.mark.parametrize("flags, named", [
    (["--strategy=mirrored", "--logical_cpus=2"],
     ["levi_hassner_bn", "2 replicas", "drop --xla", "--batch_norm=local"]),
    # XLA has no deterministic gradient of max pooling: it failed mid-training (exit 1).
    (["--deterministic"], ["--deterministic", "max pooling"])])
def test_what_xla_cannot_compile_is_refused_before_any_work(python, tmp_path, flags, named):
    result = run(trainer(python, tmp_path / "job", *flags, "--xla", *BATCH_NORM_JOB))
    assert_error_line(result, "--xla", *named)
    assert not (tmp_path / "job").exists()
