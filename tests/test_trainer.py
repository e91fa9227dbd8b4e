"""trainer.main as users run it: every strategy trains the same, resumes exactly, stops cleanly.

Every test starts the entry point as a subprocess (one device, mirrored over 2 logical CPUs,
2 multi_worker processes on 127.0.0.1, horovodrun --gloo -np 2) with the tiny model.
"""

import json
import os
import shutil
import signal

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_CROP_SIZE, Watched, json_lines, multi_worker_environments, run

AGREEMENT = 1e-5
TINY = ["--model=tiny", f"--crop_size={TINY_CROP_SIZE}", "--batch_size=16",
        "--learning_rate=0.05"]
# Same global batches for every strategy: synthetic data is a function of the seed and the
# global example index (records would give each worker its own files).
SAME_BATCHES = TINY + ["--data=synthetic", "--dropout=0", "--steps=6", "--log_every=3",
                       "--seed=3"]
VARIANTS = {"plain": ["--weight_decay=0"], "xla_weight_decay": ["--xla", "--weight_decay=0.05"]}


def trainer(python, model_dir, *flags):
    return [python, "-m", "trainer.main", f"--model_dir={model_dir}", *flags]


def horovod(horovodrun, command):
    return [horovodrun, "--gloo", "-np", "2", "-H", "localhost:2", *command]


def checkpoint_values(model_dir):
    """Every variable of the latest checkpoint (model, optimizer slots, step) by name."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{model_dir}/checkpoints"))
    names = [name for name in reader.get_variable_to_shape_map()
             if name not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/"
                             "VARIABLE_VALUE", "checkpointed_runs/.ATTRIBUTES/VARIABLE_VALUE")]
    return {name: reader.get_tensor(name) for name in names}


def checkpoint_step(model_dir):
    return int(checkpoint_values(model_dir)["step/.ATTRIBUTES/VARIABLE_VALUE"])


def largest_difference(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def events(records, name):
    return [r for r in records if r.get("event") == name]


def run_multi_worker(python, model_dir, *flags):
    jobs = [Watched(trainer(python, model_dir, *flags), env=env)
            for env in multi_worker_environments(2)]
    for job in jobs:
        assert job.finish() == 0, "".join(job.stderr)[-3000:]
    return jobs


@pytest.fixture(scope="module")
def one_device_runs(python, tmp_path_factory):
    """The reference: one device on the whole global batch, per variant."""
    runs = {}
    for variant, flags in VARIANTS.items():
        model_dir = tmp_path_factory.mktemp(f"one_device_{variant}")
        result = run(trainer(python, model_dir, "--strategy=one_device", *SAME_BATCHES, *flags))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[variant] = model_dir
    return runs


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("strategy", ["mirrored", "multi_worker", "horovod"])
def test_strategies_train_the_same_weights_as_one_device(python, horovodrun, tmp_path,
                                                         one_device_runs, strategy, variant):
    # Two steps per call (against one on the reference): the strategy's collectives run
    # inside the call's loop too.
    flags = [*SAME_BATCHES, *VARIANTS[variant], "--steps_per_call=2"]
    if strategy == "mirrored":
        result = run(trainer(python, tmp_path, "--strategy=mirrored", "--logical_cpus=2",
                             *flags))
        assert result.returncode == 0, result.stderr[-3000:]
        records = json_lines(result.stdout)
    elif strategy == "horovod":
        result = run(horovod(horovodrun, trainer(python, tmp_path, *flags)))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        records = json_lines(result.stdout)
    else:
        records = [r for job in run_multi_worker(python, tmp_path, *flags)
                   for r in job.records()]
    start = events(records, "start")[0]
    assert start["strategy"] == strategy and start["replicas"] == 2
    assert start["per_replica_batch_size"] == 8
    reference = checkpoint_values(one_device_runs[variant])
    assert largest_difference(checkpoint_values(tmp_path), reference) <= AGREEMENT
    reference_losses = [r["train/loss"] for r in json_lines(
        (one_device_runs[variant] / "metrics.jsonl").read_text())]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)


def test_several_steps_per_call_end_at_the_same_weights_and_log_at_the_same_steps(
        python, tmp_path, one_device_runs):
    result = run(trainer(python, tmp_path, "--strategy=one_device", *SAME_BATCHES,
                         *VARIANTS["plain"], "--steps_per_call=5", "--log_every=5"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in json_lines(result.stdout) if "train/loss" in r] == [5, 6]
    assert json.loads((tmp_path / "run.json").read_text())["steps_per_call"] == 5
    reference = checkpoint_values(one_device_runs["plain"])  # one step per call
    assert largest_difference(checkpoint_values(tmp_path), reference) == 0


def test_a_doubled_reduction_would_be_caught(python, tmp_path, one_device_runs):
    """The agreement above is meaningful: twice the learning rate (what a doubled gradient
    sum does) lands far outside the tolerance."""
    result = run(trainer(python, tmp_path, "--strategy=one_device", *SAME_BATCHES,
                         *VARIANTS["plain"], "--learning_rate=0.1"))
    assert result.returncode == 0, result.stderr[-3000:]
    reference = checkpoint_values(one_device_runs["plain"])
    assert largest_difference(checkpoint_values(tmp_path), reference) > 100 * AGREEMENT


@pytest.mark.parametrize("recipe, per_replica, reference_rate", [("paper", 50, 1e-3 / 50),
                                                                  ("modern", 64, 0.1 / 256)])
@pytest.mark.parametrize("replicas", ["mirrored:8", "horovod:4"])
def test_a_recipes_default_batch_is_per_replica_at_any_replica_count(
        python, horovodrun, tmp_path, recipe, per_replica, reference_rate, replicas):
    """The paper's 50 did not split over 4 replicas, and the modern 64 gave 2 images per GPU
    at 32: a recipe's batch is per replica, the global batch and the rate grow with them."""
    flags = ["--model=tiny", f"--crop_size={TINY_CROP_SIZE}", "--data=synthetic", "--steps=3",
             f"--recipe={recipe}"]
    strategy, count = replicas.split(":")
    if strategy == "mirrored":
        result = run(trainer(python, tmp_path, "--strategy=mirrored", f"--logical_cpus={count}",
                             *flags))
    else:
        result = run([horovodrun, "--gloo", "-np", count, "-H", f"localhost:{count}",
                      *trainer(python, tmp_path, *flags)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    global_batch = per_replica * int(count)
    assert f"global batch {global_batch} ({per_replica} per replica)" in result.stdout
    run_info = json.loads((tmp_path / "run.json").read_text())
    assert (run_info["replicas"], run_info["per_replica_batch_size"],
            run_info["global_batch_size"]) == (int(count), per_replica, global_batch)
    assert run_info["learning_rate"] == pytest.approx(reference_rate * global_batch)
    assert checkpoint_step(tmp_path) == 3


def test_horovod_resume_broadcasts_rank_0s_state(python, horovodrun, tmp_path):
    """Only rank 0 restores; after the broadcast both ranks go on from its step with its
    weights and optimizer state: 4 steps then 4 more equal 8 steps on one device."""
    flags = [*SAME_BATCHES[:-3], "--log_every=1", "--seed=3", *VARIANTS["plain"]]
    whole = run(trainer(python, tmp_path / "one", "--strategy=one_device", *flags, "--steps=8"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    for steps in (4, 8):
        result = run(horovod(horovodrun, trainer(python, tmp_path / "hvd", *flags,
                                                 f"--steps={steps}")))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records_ = json_lines(result.stdout)
    assert [(r["process"], r["step"]) for r in events(records_, "restored")] == [(0, 4)]
    assert sorted((r["process"], r["step"]) for r in events(records_, "finished")) == [
        (0, 8), (1, 8)]
    assert largest_difference(checkpoint_values(tmp_path / "hvd"),
                              checkpoint_values(tmp_path / "one")) <= AGREEMENT
    assert list((tmp_path / "hvd/tensorboard/train").glob("events.out.tfevents.*"))


def test_multi_workers_that_restore_different_steps_stop_naming_the_folder(
        python, tmp_path, one_device_runs):
    """A worker that cannot see the chief's checkpoints would start at step 0 beside a resumed
    chief, and the job would hang at its end: both stop at the start instead."""
    shutil.copytree(one_device_runs["plain"], tmp_path / "checkpointed")  # checkpoints at step 6
    (tmp_path / "elsewhere").mkdir()
    jobs = [Watched(trainer(python, tmp_path / folder, *SAME_BATCHES, *VARIANTS["plain"],
                            "--steps=8"), env=env)
            for folder, env in zip(("checkpointed", "elsewhere"), multi_worker_environments(2))]
    for job in jobs:
        assert job.finish() == 2, "".join(job.stderr)[-3000:]
        errors = [line for line in job.stderr if line.startswith("error:")]
        assert len(errors) == 1 and "the processes restored different steps (process 0: " \
            "step 6, process 1: step 0)" in errors[0], "".join(job.stderr)[-3000:]
    assert checkpoint_step(tmp_path / "checkpointed") == 6  # nothing trained, nothing saved


RESUME = TINY + ["--steps=300", "--checkpoint_every=20", "--log_every=1", "--eval_every=150",
                 "--deterministic", "--dropout=0.3", "--seed=5"]


def test_killed_job_resumes_to_the_weights_of_a_job_never_killed(python, records, tmp_path):
    whole = run(trainer(python, tmp_path / "whole", f"--records={records}", *RESUME))
    assert whole.returncode == 0, whole.stderr[-3000:]

    command = trainer(python, tmp_path / "killed", f"--records={records}", *RESUME)
    job = Watched(command)
    # The index file is written after a checkpoint's files: it names a complete checkpoint.
    job.wait_for(lambda j: (tmp_path / "killed/checkpoints/checkpoint").exists())
    job.process.send_signal(signal.SIGKILL)
    job.finish()
    saved = checkpoint_step(tmp_path / "killed")
    assert 0 < saved < 300

    resumed = run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records_ = json_lines(resumed.stdout)
    assert events(records_, "restored")[0]["step"] == saved
    assert [r["step"] for r in records_ if "train/loss" in r] == list(range(saved + 1, 301))
    assert largest_difference(checkpoint_values(tmp_path / "killed"),
                              checkpoint_values(tmp_path / "whole")) == 0.0  # bitwise
    losses = [r["train/loss"] for r in json_lines(whole.stdout) if "train/loss" in r]
    assert np.mean(losses[-50:]) < np.mean(losses[:50])  # it learns


STOPPABLE = SAME_BATCHES[:-3] + ["--steps=100000", "--log_every=5", "--checkpoint_every=0"]


def _assert_stopped_together(records, model_dir, processes=2):
    stopped = events(records, "stopped")
    assert sorted(r["process"] for r in stopped) == list(range(processes))
    assert len({r["step"] for r in stopped}) == 1
    assert checkpoint_step(model_dir) == stopped[0]["step"] > 0


def test_sigterm_to_one_horovod_rank_stops_both_with_one_checkpoint(python, horovodrun,
                                                                    tmp_path):
    job = Watched(horovod(horovodrun, trainer(python, tmp_path, *STOPPABLE)))
    job.wait_for(lambda j: len(events(j.records(), "start")) == 2 and
                 any("train/loss" in r for r in j.records()))
    rank1 = next(r["pid"] for r in events(job.records(), "start") if r["process"] == 1)
    os.kill(rank1, signal.SIGTERM)
    assert job.finish() == 0, "".join(job.stdout + job.stderr)[-3000:]
    _assert_stopped_together(job.records(), tmp_path)


def test_sigterm_to_one_multi_worker_process_stops_both(python, tmp_path):
    jobs = [Watched(trainer(python, tmp_path, *STOPPABLE), env=env)
            for env in multi_worker_environments(2)]
    jobs[0].wait_for(lambda j: any("train/loss" in r for r in j.records()))
    jobs[1].process.send_signal(signal.SIGTERM)
    for job in jobs:
        assert job.finish() == 0, "".join(job.stderr)[-3000:]
    _assert_stopped_together([r for job in jobs for r in job.records()], tmp_path)


def test_sigint_stops_a_single_process_job_with_a_checkpoint(python, tmp_path):
    job = Watched(trainer(python, tmp_path, *STOPPABLE))
    job.wait_for(lambda j: any("train/loss" in r for r in j.records()))
    job.process.send_signal(signal.SIGINT)
    assert job.finish() == 0, "".join(job.stderr)[-3000:]
    _assert_stopped_together(job.records(), tmp_path, processes=1)
    assert events(job.records(), "stopped")[0]["signal"] == "SIGINT"


def test_a_non_finite_loss_stops_the_job_and_keeps_the_last_good_checkpoint(python, tmp_path):
    # The warm-up starts at a rate of 0, so the first steps are sane; then the rate explodes.
    result = run(trainer(python, tmp_path, *SAME_BATCHES[:-3], "--recipe=modern",
                         "--learning_rate=1e30", "--warmup_fraction=0.5", "--steps=40",
                         "--checkpoint_every=1", "--log_every=1"))
    assert result.returncode == 3, result.stderr[-3000:]
    assert "training stopped" in result.stderr
    saved = checkpoint_values(tmp_path)
    assert all(np.all(np.isfinite(v)) for v in saved.values() if v.dtype.kind == "f")
    assert 0 < int(saved["step/.ATTRIBUTES/VARIABLE_VALUE"]) < 40


def test_evaluation_with_two_horovod_ranks_counts_every_example_once(python, horovodrun,
                                                                     records, tmp_path):
    result = run(horovod(horovodrun, trainer(python, tmp_path, f"--records={records}", *TINY,
                                             "--steps=4", "--eval_crops=10")))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((records / "manifest.json").read_text())
    evaluation = [r for r in json_lines(result.stdout) if "eval/examples" in r]
    assert evaluation and evaluation[-1]["eval/examples"] == manifest["splits"]["fold0"]["examples"]
    confusion = np.array(evaluation[-1]["eval/confusion"])
    assert confusion.sum() == evaluation[-1]["eval/examples"]


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_variables(python, tmp_path, precision):
    result = run(trainer(python, tmp_path, *SAME_BATCHES, f"--precision={precision}"))
    assert result.returncode == 0, result.stderr[-3000:]
    start = events(json_lines(result.stdout), "start")[0]
    assert start["compute_dtype"] == precision.split("_")[1]
    saved = checkpoint_values(tmp_path)
    assert all(v.dtype in (np.float32, np.int64) for v in saved.values())
    # float16 adds dynamic loss scaling: its scale is part of the optimizer's state.
    assert any("loss_scale" in name or "scale" in name
               for name in saved) == (precision == "mixed_float16")


def test_xla_compiles_the_step_with_resident_data_and_several_steps_per_call(
        python, records, tmp_path):
    result = run(trainer(python, tmp_path, *SAME_BATCHES, f"--records={records}",
                         "--data=resident", "--steps_per_call=3", "--xla"),
                 env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Compiled cluster using XLA" in result.stderr
    evaluated = [r["step"] for r in json_lines(result.stdout) if "eval/accuracy" in r]
    assert evaluated and evaluated[-1] == 6


def test_resuming_a_folder_of_another_job_is_a_clear_error(python, tmp_path):
    first = run(trainer(python, tmp_path, *SAME_BATCHES))
    assert first.returncode == 0, first.stderr[-3000:]
    other = run(trainer(python, tmp_path, *SAME_BATCHES, "--precision=mixed_float16",
                        "--steps=8"))
    assert other.returncode == 2
    assert "holds checkpoints of another job (precision: fp32 -> mixed_float16)" in other.stderr
    longer = run(trainer(python, tmp_path, *SAME_BATCHES[:-1], "--seed=4", "--steps=8"))
    assert longer.returncode == 0, longer.stderr[-3000:]
    warning = events(json_lines(longer.stdout), "warning")[0]["message"]
    assert "resuming with other seed" in warning


@pytest.mark.parametrize("flags, message", [
    (["--records=/nonexistent/records"], "/nonexistent/records"),
    (["--task=gender"], "holds age labels, not gender"),
    (["--held_out_fold=7"], "--held_out_fold=7: "),
    (["--crop_size=100"], "smaller than the 100x100 crops"),
])
def test_bad_flags_or_records_stop_before_any_work(python, records, tmp_path, flags, message):
    result = run(trainer(python, tmp_path / "job", f"--records={records}", *TINY, "--steps=2",
                         *flags))
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "job").exists()


def test_a_moving_average_is_the_finished_jobs_weights_and_training_resumes_from_its_own(
        python, tmp_path):
    def weights(model_dir, step):
        reader = tf.train.load_checkpoint(f"{model_dir}/checkpoints/ckpt-{step}")
        names = sorted(name for name in reader.get_variable_to_shape_map()
                       if name.startswith("optimizer/_trainable_variables/"))
        return [reader.get_tensor(name) for name in names], reader

    jobs = {}
    for name, extra in (("plain", []), ("averaged", ["--ema_decay=0.9"])):
        jobs[name] = tmp_path / name
        result = run(trainer(python, jobs[name], *SAME_BATCHES, "--recipe=modern",
                             "--checkpoint_every=3", "--deterministic", *extra))
        assert result.returncode == 0, result.stderr[-3000:]
        assert events(json_lines(result.stdout), "start")[0]["recipe"]["ema_decay"] == (
            0.9 if extra else 0.0)
    # Mid-training checkpoints hold the weights being trained (an exact resume needs them)...
    for plain, averaged in zip(weights(jobs["plain"], 3)[0], weights(jobs["averaged"], 3)[0]):
        np.testing.assert_array_equal(plain, averaged)
    # ...the final one their average, which evaluation, export and cross-validation then read.
    final, reader = weights(jobs["averaged"], 6)
    slots = [reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
             if name.startswith("optimizer/_variables/")]
    assert not all(np.array_equal(trained, averaged)
                   for trained, averaged in zip(weights(jobs["plain"], 6)[0], final))
    for averaged in final:
        assert any(slot.shape == averaged.shape and np.array_equal(slot, averaged)
                   for slot in slots)  # the optimizer's average, as it was kept
