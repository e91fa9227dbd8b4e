"""trainer.benchmark, trainer.time_to_accuracy and trainer.batch_scaling (trainer/bench): a small
matrix measured for real (tiny model, one process and two Horovod processes, synthetic and
records), its table, JSON lines and ratios; a time-to-accuracy race; a batch sweep; their flags."""

import errno
import json

import pytest

from conftest import TINY_CROP_SIZE, run
from launch import entry
from trainer.bench import output
from trainer.bench import processes
from trainer.bench import races
from trainer.bench import throughput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_small_matrix_is_measured_and_compared(python, records, tmp_path):
    result = run([python, "-m", "trainer.benchmark", f"--records={records}",
                  f"--crop_size={TINY_CROP_SIZE}", "--models=tiny", "--batch_sizes=16",
                  "--data=synthetic,records", "--distributions=one_device,horovod:2",
                  "--warmup_steps=2", "--window_steps=2", "--windows=2",
                  f"--out_dir={tmp_path}"], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cells = [json.loads(line) for line in (tmp_path / "benchmark.jsonl").read_text().splitlines()]
    assert len(cells) == 4
    for cell in cells:
        assert cell["min"] <= cell["images_per_sec"] <= cell["max"]
        assert 0 < cell["fraction_of_roof"] and cell["roof_flops"] >= cell["roof_matmul_flops"]
        assert cell["flops_per_image"] > 0
    assert {cell["replicas"] for cell in cells} == {1, 2}
    assert "records / synthetic (tiny, one_device" in result.stdout
    assert "horovod:2 / one process (tiny, synthetic)" in result.stdout
    assert result.stdout.splitlines()[0].split()[:3] == ["model", "batch", "precision"]
    assert "scaling model: 1,912 parameters" in result.stdout  # the tiny model's gradients
    assert (tmp_path / "benchmark.png").read_bytes().startswith(PNG_SIGNATURE)


def test_repeated_runs_of_a_cell_merge_over_all_their_windows():
    cell = {"model": "m", "global_batch_size": 8, "precision": "fp32", "xla": False,
            "batch_norm": "sync", "data": "synthetic", "distribution": "one_device", "replicas": 1,
            "flops_per_image": 10.0}
    runs = [throughput.with_rates({**cell, "roof_flops": 1e4}, [100.0, 90.0, 80.0]),
            throughput.with_rates({**cell, "data": "records", "roof_flops": 1e4}, [70.0]),
            throughput.with_rates({**cell, "roof_flops": 2e4}, [60.0, 50.0, 120.0]),
            {**cell, "data": "records", "error": "boom"}]
    synthetic, records = throughput.merged(runs)
    assert synthetic["runs"] == 2 and synthetic["rates"] == [100, 90, 80, 60, 50, 120]
    assert (synthetic["images_per_sec"], synthetic["min"], synthetic["max"]) == (85, 50, 120)
    assert synthetic["fraction_of_roof"] == pytest.approx(3 * 10 * 85 / 2e4)  # highest roof
    assert records["error"] == "boom"  # a cell that failed once is not shown as measured


def test_ratios_pair_each_cell_with_its_twin():
    base = {"model": "m", "global_batch_size": 8, "precision": "fp32", "xla": False,
            "batch_norm": "sync"}
    results = [{**base, "data": "synthetic", "distribution": "one_device", "images_per_sec": 100},
               {**base, "data": "records", "distribution": "one_device", "images_per_sec": 96},
               {**base, "data": "cached_records", "distribution": "one_device",
                "images_per_sec": 99},
               {**base, "data": "synthetic", "distribution": "horovod:2", "images_per_sec": 90},
               {**base, "data": "synthetic", "distribution": "horovod:2", "batch_norm": "local",
                "images_per_sec": 100},
               {**base, "data": "records", "distribution": "horovod:2", "error": "boom"}]
    lines = throughput.ratios(results)
    assert lines == [
        "records / synthetic (m, one_device, fp32, xla=False): 0.96x (target >= 0.95: "
        "training is not input-bound)",
        "cached_records / synthetic (m, one_device, fp32, xla=False): 0.99x (target >= 0.95: "
        "training is not input-bound)",
        "horovod:2 / one process (m, synthetic): 0.90x on the same cores (target >= 0.9: the "
        "distribution's overhead)",
        "sync / local batch norm (m, horovod:2, synthetic): 0.90x (the cost of normalising "
        "over the global batch)"]


def test_time_to_accuracy_races_two_contenders_to_the_baselines_best(python, records, tmp_path):
    result = run([python, "-m", "trainer.time_to_accuracy", f"--records={records}",
                  f"--crop_size={TINY_CROP_SIZE}",
                  "--baseline=tiny:paper", "--improved=tiny:modern", "--budget_seconds=4",
                  "--eval_every_seconds=1", "--seed=3", "--cache",
                  f"--out_dir={tmp_path}"], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    baseline, improved = [json.loads(line) for line in
                          (tmp_path / "time_to_accuracy.jsonl").read_text().splitlines()]
    target = max(point["smoothed"] for point in baseline["curve"])
    assert baseline["target"] == improved["target"] == target
    assert baseline["seed"] == improved["seed"] == 3  # both races start from the same seed
    assert baseline["cache"] and improved["cache"]  # and read the same pipeline
    assert len(baseline["curve"]) >= 3  # evaluated every second of training, and at the end
    if baseline["stopped"] == "budget":
        assert baseline["curve"][-1]["seconds"] >= 4
    for race in (baseline, improved):
        seconds = [point["seconds"] for point in race["curve"]]
        assert seconds == sorted(seconds)
        assert all(0 <= point["accuracy"] <= point["accuracy_1off"] <= 1
                   for point in race["curve"])
        for index, point in enumerate(race["curve"]):  # what "reaches" compares: 3 evaluations
            window = race["curve"][max(0, index - 2):index + 1]
            assert point["smoothed"] == pytest.approx(
                sum(p["accuracy"] for p in window) / len(window))
    assert improved["name"] == "improved 1"
    # The improved race stops at its first evaluation at or above the target, else runs out.
    reached = [point for point in improved["curve"] if point["smoothed"] >= target]
    if reached:
        assert improved["stopped"] == "target" and reached == improved["curve"][-1:]
    else:
        assert improved["stopped"] in ("budget", "schedule")
    assert "tiny           paper" in result.stdout and "tiny           modern" in result.stdout
    assert (tmp_path / "time_to_accuracy.png").read_bytes().startswith(PNG_SIGNATURE)


def test_batch_scaling_trains_each_global_batch_and_compares_it_with_the_smallest(
        python, records, tmp_path):
    refused = run([python, "-m", "trainer.batch_scaling", f"--records={records}",
                   "--batch_sizes=8,9", "--distribution=mirrored:2", f"--out_dir={tmp_path}"])
    assert_usage_error(refused, "--batch_sizes: 9 does not split over the 2 replicas")
    assert not any(tmp_path.iterdir())  # refused before any work
    result = run([python, "-m", "trainer.batch_scaling", f"--records={records}",
                  f"--crop_size={TINY_CROP_SIZE}", "--model=tiny", "--recipe=modern",
                  "--batch_sizes=16,8", "--epochs=0.2", "--distribution=mirrored:2", "--seed=3",
                  f"--out_dir={tmp_path}"], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    small, large = [json.loads(line) for line in
                    (tmp_path / "batch_scaling.jsonl").read_text().splitlines()]
    assert [small["global_batch_size"], large["global_batch_size"]] == [8, 16]  # smallest first
    assert [small["per_replica_batch_size"], large["per_replica_batch_size"]] == [4, 8]
    for sized in (small, large):  # the same job, only the batch differs
        assert (sized["seed"], sized["epochs"], sized["model"]) == (3, 0.2, "tiny")
        assert sized["steps_per_epoch"] == -(-sized["train_examples"] // sized["global_batch_size"])
        assert sized["learning_rate"] == pytest.approx(0.1 * sized["global_batch_size"] / 256)
        assert 0 <= sized["accuracy"] <= sized["accuracy_1off"] <= 1 and sized["train_seconds"] > 0
    assert small["model_dir"] != large["model_dir"]  # a fresh folder each
    assert 0 < small["largest_class_share"] == large["largest_class_share"] < 1  # the floor
    assert large["accuracy_minus_smallest"] == pytest.approx(large["accuracy"] - small["accuracy"])
    assert small["accuracy_minus_smallest"] == 0
    # 185 training faces: 24 steps per epoch at 8, 12 at 16, where trainer.main warns.
    assert small["warning"] is None and "steps per epoch" in large["warning"]
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:4]}
    assert rows["8"].split()[:3] == ["8", "4", "24"]
    assert rows["16"].split()[:3] == ["16", "8", "12*"]
    assert "+0.0 pt 1.00x" in rows["8"]
    assert (tmp_path / "batch_scaling.png").read_bytes().startswith(PNG_SIGNATURE)


def test_time_to_target_is_the_first_evaluation_at_or_above_it():
    def race(name, points):
        return {"name": name, "model": "m", "recipe": "r", "precision": "fp32",
                "budget_seconds": 100, "images_per_sec": 10.0, "stopped": "budget",
                "curve": [{"seconds": s, "step": s, "accuracy": a, "accuracy_1off": a,
                           "smoothed": a} for s, a in points]}
    baseline = race("baseline", [(10, 0.3), (60, 0.5), (90, 0.45)])
    improved = race("improved", [(5, 0.4), (20, 0.5)])
    assert races.time_to(baseline["curve"], 0.5) == 60
    assert races.time_to(improved["curve"], 0.6) is None
    lines = races.summary(baseline, [improved, race("improved 2", [(5, 0.4)])], 0.5)
    assert lines[-2:] == [
        "improved: 50.0% held-out exact accuracy 3.0x sooner than the baseline (20.0 s vs "
        "60.0 s; goal >= 3x)",
        "improved 2: never reached 50.0% (stopped by its budget after 5.0 s of training)"]


def test_a_contender_is_model_recipe_and_optional_precision():
    assert races.contender("resnet:modern:mixed_bfloat16") == {
        "model": "resnet", "recipe": "modern", "precision": "mixed_bfloat16"}
    assert races.contender("levi_hassner:paper")["precision"] == "fp32"
    with pytest.raises(ValueError, match="MODEL:RECIPE"):
        races.contender("resnet")


def assert_usage_error(result, *named):
    """Exit 2 and one `error:` line on stderr that names each of `named`, no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    for name in named:
        assert name in errors[0]
    assert "Traceback" not in result.stderr


def test_an_unknown_data_source_is_named(python, tmp_path):
    result = run([python, "-m", "trainer.benchmark", "--data=synthetic,tfrecords",
                  f"--out_dir={tmp_path}"])
    assert_usage_error(result, "--data tfrecords: not one of synthetic, records, cached_records")


@pytest.mark.parametrize("command, flag", [
    ("trainer.benchmark", "--distributions=one_device,horovod:x"),
    ("trainer.time_to_accuracy", "--distribution=horovod:2")])  # a race runs in one process
def test_a_bad_distribution_is_refused_by_name(python, tmp_path, command, flag):
    result = run([python, "-m", command, flag, "--records=unused", f"--out_dir={tmp_path}"])
    assert_usage_error(result, flag.split("=")[1].split(",")[-1])
    assert not any(tmp_path.iterdir())  # refused before any work


def test_a_distribution_is_one_device_horovod_n_or_mirrored_n():
    parse = processes.Distribution.parse
    assert (parse("one_device").processes, parse("one_device").logical_cpus) == (1, 0)
    assert (parse("horovod:4").processes, parse("horovod:4").logical_cpus) == (4, 0)
    assert (parse("mirrored:2").processes, parse("mirrored:2").logical_cpus) == (1, 2)
    assert [str(parse(text)) for text in ("one_device", "horovod:4")] == ["one_device",
                                                                          "horovod:4"]
    for bad in ("horovod", "horovod:0", "mirrored:x", "one_device:2", "multi_worker:2", "auto"):
        with pytest.raises(ValueError, match=f"'{bad}' is not a distribution"):
            parse(bad)


def test_the_old_mode_spelling_runs_time_to_accuracy_after_a_pointer(python, tmp_path):
    # --baseline is a flag of trainer.time_to_accuracy only: its check answering shows that the
    # old spelling ran the new command, with the other flags.
    result = run([python, "-m", "trainer.benchmark", "--mode=time_to_accuracy",
                  "--records=unused", "--baseline=levi_hassner", f"--out_dir={tmp_path}"])
    pointers = [line for line in result.stderr.splitlines()
                if "python -m trainer.time_to_accuracy" in line]
    assert len(pointers) == 1 and "--baseline=levi_hassner" in pointers[0]
    assert_usage_error(result, "--baseline", "MODEL:RECIPE")


@pytest.mark.parametrize("command, own, foreign", [
    ("trainer.benchmark", "--distributions", ["--baseline", "--mode", "--budget_seconds"]),
    ("trainer.time_to_accuracy", "--baseline", ["--distributions", "--mode", "--windows"])])
def test_help_lists_each_commands_own_flags_and_no_internal_ones(python, command, own,
                                                                  foreign):
    result = run([python, "-m", command, "--help"])
    listed = {line.split(":")[0].strip() for line in result.stdout.splitlines()
              if line.startswith("  --")}
    assert {own, "--records", "--out_dir"} <= listed
    assert not listed & {"--cell", "--race", *foreign}


@pytest.mark.parametrize("command", ["trainer.benchmark", "trainer.time_to_accuracy"])
def test_an_out_dir_that_cannot_be_a_folder_is_refused_before_any_work(python, tmp_path,
                                                                         command):
    (tmp_path / "file").write_text("the user's")
    out_dir = tmp_path / "file" / "out"
    result = run([python, "-m", command, "--records=unused", f"--out_dir={out_dir}"])
    assert_usage_error(result, f"--out_dir={out_dir}", "not a directory")
    assert (tmp_path / "file").read_text() == "the user's"


def test_a_full_disk_under_out_dir_is_one_user_error(tmp_path, monkeypatch):
    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(output.os, "makedirs", full)
    with pytest.raises(entry.UserError, match=f"--out_dir={tmp_path}: {tmp_path}: no space left "
                                              f"on device"):
        output.open_jsonl(str(tmp_path), "benchmark.jsonl")
