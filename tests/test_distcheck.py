"""Distributed training computes what one device computes, under tf.distribute and Horovod.

Each run trains the same tiny model from the same seed on the same global batch, split across
the replicas. The known mistakes (a per-replica mean loss, an extra SUM all-reduce, no
reduction under Horovod) change the update by far more than the tolerance, and each is shown to
make the check fail, so a passing check means the reduction is right.
"""

import numpy as np
import pytest

from conftest import json_lines, multi_worker_environments, run, start

TOLERANCE = 1e-5


def _weights(path):
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _max_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def _distcheck(python, out_dir, *flags):
    return run([python, "-m", "trainer.distcheck", f"--out_dir={out_dir}",
                f"--tolerance={TOLERANCE}", *flags])


def _horovod(horovodrun, python, out_dir, *flags):
    return run([horovodrun, "--gloo", "-np", "2", "-H", "localhost:2", python, "-m",
                "trainer.distcheck", f"--out_dir={out_dir}", f"--tolerance={TOLERANCE}", *flags])


def test_mirrored_on_two_logical_cpus_equals_one_device(python, tmp_path):
    one = _distcheck(python, tmp_path / "one", "--strategy=one_device")
    mirrored = _distcheck(python, tmp_path / "mirrored", "--strategy=mirrored", "--logical_cpus=2")
    assert one.returncode == 0, one.stderr[-3000:]
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    report = json_lines(mirrored.stdout)[-1]
    assert report["replicas"] == 2 and report["agree"]
    difference = _max_difference(_weights(tmp_path / "one/weights-0.npz"),
                                 _weights(tmp_path / "mirrored/weights-0.npz"))
    assert difference <= TOLERANCE


@pytest.mark.parametrize("mistake", ["replica_mean_loss", "extra_sum_allreduce"])
def test_mirrored_check_fails_on_a_doubled_update(python, tmp_path, mistake):
    result = _distcheck(python, tmp_path, "--strategy=mirrored", "--logical_cpus=2",
                        f"--inject={mistake}")
    assert result.returncode == 1, result.stderr[-3000:]
    assert json_lines(result.stdout)[-1]["max_abs_difference"] > 100 * TOLERANCE


def test_horovod_two_ranks_end_identical_and_equal_one_device(horovodrun, python, tmp_path):
    result = _horovod(horovodrun, python, tmp_path, "--strategy=auto")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = sorted(json_lines(result.stdout), key=lambda r: r["process"])
    assert [r["process"] for r in reports] == [0, 1]
    for report in reports:
        assert report["strategy"] == "horovod" and report["replicas"] == 2 and report["agree"]
        # Two processes on this host: each takes its share of the cores.
        assert report["threads"]["processes"] == 2
        assert report["threads"]["intra_op"] == max(1, report["threads"]["cores"] // 2)
    rank0, rank1 = _weights(tmp_path / "weights-0.npz"), _weights(tmp_path / "weights-1.npz")
    assert all(np.array_equal(a, b) for a, b in zip(rank0, rank1))


def test_horovod_without_reduction_ranks_diverge(horovodrun, python, tmp_path):
    reduced = _horovod(horovodrun, python, tmp_path / "reduced", "--strategy=horovod")
    unreduced = _horovod(horovodrun, python, tmp_path / "unreduced", "--strategy=horovod",
                         "--inject=no_reduction")
    assert reduced.returncode == 0, reduced.stdout[-3000:] + reduced.stderr[-3000:]
    assert unreduced.returncode != 0  # the check itself reports the divergence
    rank0 = _weights(tmp_path / "unreduced/weights-0.npz")
    rank1 = _weights(tmp_path / "unreduced/weights-1.npz")
    assert _max_difference(rank0, rank1) > 100 * TOLERANCE
    assert _max_difference(rank0, _weights(tmp_path / "reduced/weights-0.npz")) > 100 * TOLERANCE


def test_horovod_check_fails_on_a_per_replica_mean_loss(horovodrun, python, tmp_path):
    result = _horovod(horovodrun, python, tmp_path, "--strategy=horovod",
                      "--inject=replica_mean_loss")
    assert result.returncode != 0
    reports = json_lines(result.stdout)
    assert reports and all(r["max_abs_difference"] > 100 * TOLERANCE for r in reports)


def test_multi_worker_two_processes_agree_with_one_device(python, tmp_path):
    processes = [start([python, "-m", "trainer.distcheck", "--strategy=auto",
                        f"--out_dir={tmp_path}", f"--tolerance={TOLERANCE}"], env=env)
                 for env in multi_worker_environments(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
        report = json_lines(stdout)[-1]
        assert report["strategy"] == "multi_worker" and report["replicas"] == 2
        assert report["agree"] and report["threads"]["processes"] == 2
    worker0, worker1 = _weights(tmp_path / "weights-0.npz"), _weights(tmp_path / "weights-1.npz")
    assert all(np.array_equal(a, b) for a, b in zip(worker0, worker1))
