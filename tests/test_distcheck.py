"""The distributed self-check runs the trainer's real step and compares it with one device.

Each run trains a batch-norm model (or the paper's network) from the same weights on the same
global batches, split across the replicas, and compares the weights, the moving statistics and
the optimizer state with one device on the whole batches. The known mistakes (a per-replica
mean loss, an extra SUM all-reduce, no reduction under Horovod, per-replica batch norm) change
them by far more than the tolerance, and each is shown to make the check fail, so a passing
check means the distribution is right.
"""

import numpy as np
import pytest

from conftest import json_lines, multi_worker_environments, run, start

TOLERANCE = 1e-5  # the check's own default in fp32
# Small batches and few steps: seconds of compute; most of a run is TensorFlow's start.
QUICK = ["--batch_size=16", "--steps=2"]


def _weights(path):
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _distcheck(python, out_dir, *flags):
    return run([python, "-m", "trainer.distcheck", f"--out_dir={out_dir}", *QUICK, *flags])


def _horovod(horovodrun, python, out_dir, *flags):
    return run([horovodrun, "--gloo", "-np", "2", "-H", "localhost:2", python, "-m",
                "trainer.distcheck", f"--out_dir={out_dir}", *QUICK, *flags])


def _report(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json_lines(result.stdout)[-1]
    assert report["agree"] and report["losses"] == pytest.approx(report["reference_losses"],
                                                                 rel=1e-3)
    return report


def test_synchronized_batch_norm_over_two_logical_cpus_equals_one_device(python, tmp_path):
    report = _report(_distcheck(python, tmp_path, "--strategy=mirrored", "--logical_cpus=2"))
    assert report["replicas"] == 2 and report["model"] == "levi_hassner_bn"
    assert report["batch_norm"] == "sync" and report["batch_norm_layers"] == 3
    assert max(report["differences"].values()) <= TOLERANCE


def test_horovod_two_ranks_end_identical_and_equal_one_device(horovodrun, python, tmp_path):
    result = _horovod(horovodrun, python, tmp_path, "--strategy=auto")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = sorted(json_lines(result.stdout), key=lambda r: r["process"])
    assert [r["process"] for r in reports] == [0, 1]
    for report in reports:
        assert report["strategy"] == "horovod" and report["replicas"] == 2 and report["agree"]
        assert report["batch_norm_layers"] == 3
        # Two processes on this host: each takes its share of the cores.
        assert report["threads"]["processes"] == 2
        assert report["threads"]["intra_op"] == max(1, report["threads"]["cores"] // 2)
    rank0, rank1 = _weights(tmp_path / "weights-0.npz"), _weights(tmp_path / "weights-1.npz")
    assert all(np.array_equal(a, b) for a, b in zip(rank0, rank1))


def test_paper_recipe_with_its_learning_rate_multipliers_equals_one_device(python, tmp_path):
    # The multipliers are the paper network's (levi_hassner.lr_multipliers: biases 2x, fc8
    # 10x / 20x); the batch-norm networks have none, so the paper's network is the one to run.
    report = _report(_distcheck(python, tmp_path, "--strategy=mirrored", "--logical_cpus=2",
                                "--model=levi_hassner", "--recipe=paper"))
    assert report["recipe"] == "paper" and report["lr_multipliers"] > 0


def test_loss_scaling_and_local_batch_norm_equal_one_device(python, tmp_path):
    """mixed_float16 (the loss scaled, the step skipped on every replica or none), and batch
    norm over each replica's slice with the statistics averaged, as --batch_norm=local trains:
    one device then normalises each slice over itself."""
    report = _report(_distcheck(python, tmp_path, "--strategy=mirrored", "--logical_cpus=2",
                                "--precision=mixed_float16", "--batch_norm=local"))
    assert report["loss_scaling"] and report["batch_norm"] == "local"
    assert report["batch_norm_layers"] == 3


@pytest.mark.parametrize("mistake", ["replica_mean_loss", "extra_sum_allreduce",
                                     "unsynced_batch_norm"])
def test_mirrored_check_fails_on_each_known_mistake(python, tmp_path, mistake):
    result = _distcheck(python, tmp_path, "--strategy=mirrored", "--logical_cpus=2",
                        f"--inject={mistake}")
    assert result.returncode == 1, result.stderr[-3000:]
    report = json_lines(result.stdout)[-1]
    assert not report["agree"] and max(report["differences"].values()) > 100 * TOLERANCE
    if mistake == "unsynced_batch_norm":  # normalised over 8, not 16: other statistics
        assert report["differences"]["moving_statistics"] > 100 * TOLERANCE


def test_horovod_without_reduction_ranks_diverge_and_the_check_fails(horovodrun, python,
                                                                     tmp_path):
    result = _horovod(horovodrun, python, tmp_path, "--strategy=horovod",
                      "--inject=no_reduction")
    assert result.returncode != 0
    reports = json_lines(result.stdout)
    assert len(reports) == 2 and not any(r["agree"] for r in reports)
    rank0, rank1 = _weights(tmp_path / "weights-0.npz"), _weights(tmp_path / "weights-1.npz")
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(rank0, rank1)) > 100 * TOLERANCE


def test_multi_worker_two_processes_agree_with_one_device(python, tmp_path):
    processes = [start([python, "-m", "trainer.distcheck", "--strategy=auto",
                        f"--out_dir={tmp_path}", *QUICK], env=env)
                 for env in multi_worker_environments(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
        report = json_lines(stdout)[-1]
        assert report["strategy"] == "multi_worker" and report["replicas"] == 2
        assert report["agree"] and report["threads"]["processes"] == 2
    worker0, worker1 = _weights(tmp_path / "weights-0.npz"), _weights(tmp_path / "weights-1.npz")
    assert all(np.array_equal(a, b) for a, b in zip(worker0, worker1))
