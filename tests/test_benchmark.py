"""trainer.benchmark, trainer.time_to_accuracy, trainer.batch_scaling and trainer.bench.sampler: a
small matrix measured for real by the training loop (tiny model, one process and two Horovod
processes with fp16 gradients, synthetic and resident data, 2 steps per call), its table, JSON
lines and ratios; the resident sampler beside the JPEG pipeline; a time-to-accuracy race; a
batch sweep; their flags."""

import errno
import json
import re

import pytest

from conftest import TINY_CROP_SIZE, run
from launch import entry
from trainer import bundles
from trainer.bench import output
from trainer.bench import processes
from trainer.bench import races
from trainer.bench import throughput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_small_matrix_is_measured_by_the_training_loop_and_compared(python, records,
                                                                       tmp_path):
    allreduce = tmp_path / "allreduce.jsonl"  # as trainer.bench.allreduce writes it
    allreduce.write_text(json.dumps({
        "model": "tiny", "ranks": 2, "collectives": "Gloo", "tensors": 6, "gradient_bytes": 7648,
        "median_ms": {"none": 1.0, "fp16": 2.0}}) + "\n")
    result = run([python, "-m", "trainer.benchmark", f"--records={records}",
                  f"--crop_size={TINY_CROP_SIZE}", "--models=tiny", "--batch_sizes=16",
                  "--data=synthetic,resident", "--distributions=one_device,horovod:2",
                  "--steps_per_call=2", "--gradient_compression=fp16", "--warmup_steps=1",
                  "--window_steps=2", "--windows=2", f"--allreduce_jsonl={allreduce}",
                  f"--out_dir={tmp_path}"], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cells = [json.loads(line) for line in (tmp_path / "benchmark.jsonl").read_text().splitlines()]
    # fp16 compresses Horovod's all-reduce only: one process is measured uncompressed.
    assert [(c["data"], c["distribution"], c["gradient_compression"]) for c in cells] == [
        ("synthetic", "one_device", "none"), ("synthetic", "horovod:2", "fp16"),
        ("resident", "one_device", "none"), ("resident", "horovod:2", "fp16")]
    for cell in cells:
        assert cell["steps_per_call"] == 2
        # The loop's own log lines, one per window after the warm-up (rounded up to a window).
        assert cell["warmup_steps"] == 2 and cell["window_ends"] == [4, 6]
        assert len(cell["rates"]) == 2
        assert cell["min"] <= cell["images_per_sec"] <= cell["max"]
        assert 0 < cell["fraction_of_roof"] and cell["roof_flops"] >= cell["roof_matmul_flops"]
        assert cell["flops_per_image"] > 0
    assert {cell["replicas"] for cell in cells} == {1, 2}
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "batch", "precision"]
    assert lines[2].split()[6:9] == ["horovod:2", "2", "fp16"]  # distribution, calls, grads
    assert any(line.startswith("resident / synthetic (tiny, batch 16, fp32, one_device, "
                               "2 steps/call): ") for line in lines)
    assert any(line.startswith("horovod:2 with fp16 gradients / one process (tiny, batch 16, "
                               "fp32, resident, 2 steps/call): ") for line in lines)
    assert "scaling model: 1,912 parameters" in result.stdout  # the tiny model's gradients
    assert "measured here: 2 ranks over Gloo" in result.stdout  # --allreduce_jsonl's
    assert (tmp_path / "benchmark.png").read_bytes().startswith(PNG_SIGNATURE)


def test_the_matrix_compresses_only_horovods_gradients():
    cells = throughput.matrix(["tiny"], [16], ["fp32"], [False], ["synthetic"],
                              ["one_device", "horovod:2", "mirrored:2"], 56, None,
                              steps_per_calls=[1, 10], gradient_compressions=["none", "fp16"])
    assert [(c["distribution"], c["steps_per_call"], c["gradient_compression"])
            for c in cells] == [
        ("one_device", 1, "none"), ("one_device", 10, "none"),
        ("horovod:2", 1, "none"), ("horovod:2", 1, "fp16"),
        ("horovod:2", 10, "none"), ("horovod:2", 10, "fp16"),
        ("mirrored:2", 1, "none"), ("mirrored:2", 10, "none")]


def test_a_cells_rates_are_the_loops_windows_after_the_warm_up(tmp_path):
    logged = [{"step": 0, "event": "start"},
              {"step": 5, "train/loss": 2.0, "train/images_per_sec": 10.0},
              {"step": 10, "train/loss": 2.0, "train/images_per_sec": 30.0},
              {"step": 15, "train/loss": 2.0, "train/images_per_sec": 20.0},
              {"step": 15, "eval/accuracy": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in logged))
    assert throughput.logged_windows(str(tmp_path), after_step=5) == {10: 30.0, 15: 20.0}


def test_repeated_runs_of_a_cell_merge_over_all_their_windows():
    cell = {"model": "m", "global_batch_size": 8, "precision": "fp32", "xla": False,
            "batch_norm": "sync", "data": "synthetic", "distribution": "one_device",
            "steps_per_call": 1, "gradient_compression": "none", "replicas": 1,
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
            "batch_norm": "sync", "steps_per_call": 1, "gradient_compression": "none"}
    one, two = "one_device", "horovod:2"
    results = [{**base, "data": "synthetic", "distribution": one, "images_per_sec": 100},
               {**base, "data": "records", "distribution": one, "images_per_sec": 96},
               {**base, "data": "resident", "distribution": one, "images_per_sec": 99},
               {**base, "data": "synthetic", "distribution": one, "steps_per_call": 10,
                "images_per_sec": 150},
               {**base, "data": "synthetic", "distribution": two, "images_per_sec": 90},
               {**base, "data": "synthetic", "distribution": two,
                "gradient_compression": "fp16", "images_per_sec": 45},
               {**base, "data": "synthetic", "distribution": two, "batch_norm": "local",
                "images_per_sec": 100},
               {**base, "data": "records", "distribution": two, "error": "boom"}]
    assert throughput.ratios(results) == [
        "records / synthetic (m, batch 8, fp32, one_device): 0.96x (target >= 0.95: training "
        "is not input-bound)",
        "resident / synthetic (m, batch 8, fp32, one_device): 0.99x (target >= 0.95: training "
        "is not input-bound)",
        "10 / 1 steps per call (m, batch 8, fp32, synthetic, one_device): 1.50x (the host's "
        "launch of a call, paid once per 10 steps)",
        "horovod:2 / one process (m, batch 8, fp32, synthetic): 0.90x on the same cores (the "
        "distribution's overhead)",
        "sync / local batch norm (m, batch 8, fp32, synthetic, horovod:2): 0.90x (the cost of "
        "normalising over the global batch)",
        "horovod:2 with fp16 gradients / one process (m, batch 8, fp32, synthetic): 0.45x on "
        "the same cores (the distribution's overhead)",
        "fp16 / uncompressed gradients (m, batch 8, fp32, synthetic, horovod:2): 0.50x "
        "(Horovod's all-reduce of the gradients)"]


def test_the_resident_sampler_is_measured_beside_the_jpeg_pipeline_on_one_core(python, records,
                                                                              tmp_path):
    result = run([python, "-m", "trainer.bench.sampler", f"--records={records}",
                  f"--crop_size={TINY_CROP_SIZE}", "--batch_size=8", "--steps_per_call=2",
                  "--seconds=0.2", "--repeats=2", f"--out_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    measured, = [json.loads(line) for line in (tmp_path / "sampler.jsonl").read_text()
                 .splitlines()]
    assert measured["cores"] == 1 and set(measured["rates"]) == {"resident", "records"}
    assert all(len(rates) == 2 and min(rates) > 0 for rates in measured["rates"].values())
    resident, records_line, ratio = result.stdout.splitlines()[-3:]
    assert resident.startswith("resident sampler (gather, crop, flip on the decoded records): ")
    assert records_line.startswith("JPEG pipeline (read, parse, decode, crop, flip, batch): ")
    assert "8 images of 56x56 per batch, 1 core(s), median of 2 turns; no model" in resident
    speeds = measured["images_per_sec"]
    assert ratio == (f"resident / JPEG pipeline: {speeds['resident'] / speeds['records']:.1f}x "
                     f"on the same 1 core(s)")


def test_time_to_accuracy_races_a_contender_to_a_reused_baselines_best(python, records,
                                                                       tmp_path):
    same_race = [f"--records={records}", f"--crop_size={TINY_CROP_SIZE}", "--budget_seconds=8",
                 "--baseline=tiny:paper", "--baseline_eval_every_seconds=0.5", "--seed=3",
                 "--cache"]
    first = run([python, "-m", "trainer.time_to_accuracy", *same_race, "--improved=",
                 f"--out_dir={tmp_path}"], timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    measured = tmp_path / "time_to_accuracy.jsonl"
    baseline, = [json.loads(line) for line in measured.read_text().splitlines()]
    accuracies = [point["accuracy"] for point in baseline["curve"]]
    assert len(accuracies) >= 3  # evaluated every half second of training, and at the end
    windows = [sum(accuracies[i:i + 3]) / 3 for i in range(len(accuracies) - 2)]
    assert [point["sustained"] for point in baseline["curve"]] == pytest.approx(
        windows + [None, None])  # the last two begin no window
    assert baseline["target"] == max(windows)  # the best sustained accuracy within the budget
    assert baseline["seconds_to_target"] == baseline["curve"][windows.index(max(windows))][
        "seconds"]  # credited with its best window's first evaluation
    assert baseline["seconds_to_half_point_below"] <= baseline["seconds_to_target"]
    if baseline["stopped"] == "budget":
        assert baseline["curve"][-1]["seconds"] >= 8
    assert baseline["records_manifest_sha256"] and baseline["machine"]["cores"] >= 1

    again = tmp_path / "again"
    second = run([python, "-m", "trainer.time_to_accuracy", *same_race,
                  f"--baseline_from={measured}", "--improved=tiny:modern",
                  "--eval_every_seconds=0.5", f"--out_dir={again}"], timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"baseline reused from {measured}, measured {baseline['date']}" in second.stdout
    assert "  baseline:" not in second.stderr  # its race did not run again
    reused, improved = [json.loads(line) for line in
                        (again / "time_to_accuracy.jsonl").read_text().splitlines()]
    assert reused["curve"] == baseline["curve"] and reused["reused_from"] == str(measured)
    assert improved["target"] == baseline["target"]
    assert improved["seed"] == 3 and improved["cache"]  # the same start and pipeline
    assert improved["name"] == "improved 1"
    seconds = [point["seconds"] for point in improved["curve"]]
    assert all(0.5 <= later - earlier for earlier, later in zip(seconds, seconds[1:-1]))
    assert all(0 <= point["accuracy"] <= point["accuracy_1off"] <= 1
               for point in improved["curve"])
    # It stops once a window sustains the target, credited with the window's first evaluation.
    if improved["seconds_to_target"] is not None:
        assert improved["stopped"] == "target"
        assert improved["seconds_to_target"] == seconds[-3]
        assert improved["sooner"] == pytest.approx(
            baseline["seconds_to_target"] / seconds[-3])
        assert improved["sooner_than_half_point_below"] == pytest.approx(
            baseline["seconds_to_half_point_below"] / seconds[-3])
    else:
        assert improved["stopped"] in ("budget", "schedule") and improved["sooner"] is None
    assert "tiny           paper" in second.stdout and "tiny           modern" in second.stdout
    assert (again / "time_to_accuracy.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_baseline_measured_with_other_settings_is_not_reused(tmp_path):
    settings = {"model": "levi_hassner", "recipe": "paper", "recipe_settings": {},
                "precision": "fp32", "data": "records", "steps_per_call": 1, "xla": False,
                "epochs": 0,
                "records_manifest_sha256": "ab12", "held_out_fold": 0, "crop_size": 56,
                "budget_seconds": 1200, "eval_every_seconds": 30, "smoothing": 3, "seed": 0,
                "cache": True, "distribution": "one_device",
                "machine": {"processor": "x", "cores": 2, "tensorflow": "2.21.0"}}
    saved = tmp_path / "time_to_accuracy.jsonl"
    lines = [{**settings, "name": "baseline", "date": "then"},
             {**settings, "name": "improved 1", "crop_size": 64},
             {**settings, "name": "baseline", "crop_size": 64, "date": "later"}]
    saved.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert races.reused_baseline(str(saved), settings)["date"] == "then"  # the one that fits
    assert races.reused_baseline(str(saved), {**settings, "crop_size": 64})["date"] == "later"
    elsewhere = {**settings, "crop_size": 48, "machine": {**settings["machine"], "cores": 8}}
    with pytest.raises(entry.UserError) as refused:
        races.reused_baseline(str(saved), elsewhere)
    assert str(refused.value).startswith(f"--baseline_from={saved}: ")
    assert "crop_size 64 there, 48 here" in str(refused.value)  # against the latest one
    assert "'cores': 8" in str(refused.value) and "\n" not in str(refused.value)
    # One saved before a race had these fields was run with their defaults.
    older = {key: value for key, value in settings.items()
             if key not in ("recipe_settings", "data", "steps_per_call", "xla")}
    saved.write_text(json.dumps({**older, "name": "baseline", "date": "before"}) + "\n")
    assert races.reused_baseline(str(saved), settings)["date"] == "before"
    saved.write_text(json.dumps(lines[1]) + "\n")
    with pytest.raises(entry.UserError, match="no baseline race in it"):
        races.reused_baseline(str(saved), settings)


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


def test_a_race_is_credited_with_the_first_evaluation_whose_window_reaches_the_target():
    def curve(*accuracies):
        return [{"seconds": 10.0 * (index + 1), "step": index + 1, "accuracy": accuracy,
                 "accuracy_1off": accuracy} for index, accuracy in enumerate(accuracies)]
    rising = curve(0.25, 0.75, 0.5, 0.25, 1.0, 1.0)  # windows of 3: 0.5, 0.5, 0.583, 0.75
    assert races.window_means(rising, 3)[-2:] == [None, None]
    assert races.time_to(rising, 0.5, 3) == 10  # the window's first evaluation, though 0.25
    assert races.time_to(rising, 0.55, 3) == 30
    assert races.time_to(rising, 0.7, 3) == 40
    assert races.time_to(rising, 0.8, 3) is None  # the last two begin no window of three
    assert races.time_to(rising, 0.8, 1) == 50
    assert races.best_sustained(rising, 3) == 0.75
    assert races.best_sustained(curve(0.9, 0.9), 3) is None


def test_the_summary_compares_with_the_baselines_target_and_half_a_point_below():
    def race(name, points):
        return {"name": name, "spec": "m:r", "model": "m", "recipe": "r", "precision": "fp32",
                "smoothing": 3,
                "images_per_sec": 10.0, "stopped": "budget",
                "curve": [{"seconds": s, "step": s, "accuracy": a, "accuracy_1off": a}
                          for s, a in points]}
    baseline = race("baseline", [(100, 0.5), (200, 0.7), (300, 0.7), (400, 0.71), (500, 0.71),
                                 (600, 0.71)])
    target = races.best_sustained(baseline["curve"], 3)  # 0.71, from 400 s; 0.7067 from 300 s
    improved = race("improved", [(10, 0.72), (20, 0.72), (30, 0.72)])
    assert races.compared(improved, baseline, target) == {
        "seconds_to_target": 10, "sooner": 40, "sooner_than_half_point_below": 30}
    lines = races.summary(baseline, [improved, race("improved 2", [(5, 0.4)])], target)
    assert lines[1].split()[-4:] == ["71.0%", "400.0", "s", "budget"]
    assert lines[-2:] == [
        "improved (m:r): sustained 71.0% held-out exact accuracy 40.0x sooner than the baseline "
        "(10.0 s vs 400.0 s); 30.0x against the baseline's 300.0 s to 70.5%",
        "improved 2 (m:r): never sustained 71.0% (stopped by its budget after 5.0 s of "
        "training)"]


def assert_usage_error(result, *named):
    """Exit 2 and one `error:` line on stderr that names each of `named`, no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    for name in named:
        assert name in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag, named", [
    ("--data=synthetic,tfrecords",
     "--data tfrecords: not one of synthetic, records, cached_records, resident"),
    ("--steps_per_call=1,10", "--window_steps must be a multiple of each --steps_per_call"),
    ("--allreduce_jsonl=missing.jsonl", "missing.jsonl")])
def test_a_bad_matrix_flag_is_refused_by_name_before_any_work(python, tmp_path, flag, named):
    result = run([python, "-m", "trainer.benchmark", "--data=synthetic", flag,
                  f"--out_dir={tmp_path / 'out'}"])
    assert_usage_error(result, named)
    assert not any(tmp_path.iterdir())


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


def test_a_contender_is_a_bundle_or_a_model_and_recipe_with_settings_of_either():
    improved = races.contender("improved")
    assert (improved["model"], improved["data"]) == (bundles.IMPROVED.model,
                                                      bundles.IMPROVED.data)
    tuned = races.contender("improved:epochs=12:ema_decay=0.999:nesterov=false")
    assert tuned["epochs"] == 12.0 and tuned["spec"] == "improved:epochs=12:ema_decay=0.999:" \
        "nesterov=false"
    assert tuned["recipe_settings"] == {**bundles.IMPROVED.recipe_settings, "ema_decay": 0.999,
                                        "nesterov": False}
    assert races.contender("resnet:modern:mixed_bfloat16") == {
        "spec": "resnet:modern:mixed_bfloat16", "model": "resnet", "recipe": "modern",
        "precision": "mixed_bfloat16", "recipe_settings": {}}
    assert races.contender("levi_hassner:paper")["precision"] == "fp32"
    assert races.contender("resnet:modern:mixed_bfloat16:data=resident")["data"] == "resident"
    for spec, message in (("improved:momentum=fast", "momentum='fast' is not a float"),
                          ("improved:speed=2", "unknown setting 'speed'"),
                          ("improved:data=disk", "unknown data 'disk'"),
                          ("resnet", "a contender is a bundle (improved, paper) or MODEL:RECIPE")):
        with pytest.raises(ValueError, match=re.escape(message)):
            races.contender(spec)
