"""trainer.benchmark: a small matrix measured for real (tiny model, one process and two Horovod
processes, synthetic and records), its table, JSON lines and ratios."""

import json

import pytest

from conftest import TINY_CROP_SIZE, run
from trainer import benchmark
from trainer import time_to_accuracy

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
            "data": "synthetic", "distribution": "one_device", "replicas": 1,
            "flops_per_image": 10.0}
    runs = [benchmark.with_rates({**cell, "roof_flops": 1e4}, [100.0, 90.0, 80.0]),
            benchmark.with_rates({**cell, "data": "records", "roof_flops": 1e4}, [70.0]),
            benchmark.with_rates({**cell, "roof_flops": 2e4}, [60.0, 50.0, 120.0]),
            {**cell, "data": "records", "error": "boom"}]
    synthetic, records = benchmark.merged(runs)
    assert synthetic["runs"] == 2 and synthetic["rates"] == [100, 90, 80, 60, 50, 120]
    assert (synthetic["images_per_sec"], synthetic["min"], synthetic["max"]) == (85, 50, 120)
    assert synthetic["fraction_of_roof"] == pytest.approx(3 * 10 * 85 / 2e4)  # highest roof
    assert records["error"] == "boom"  # a cell that failed once is not shown as measured


def test_ratios_pair_each_cell_with_its_twin():
    base = {"model": "m", "global_batch_size": 8, "precision": "fp32", "xla": False}
    results = [{**base, "data": "synthetic", "distribution": "one_device", "images_per_sec": 100},
               {**base, "data": "records", "distribution": "one_device", "images_per_sec": 96},
               {**base, "data": "cached_records", "distribution": "one_device",
                "images_per_sec": 99},
               {**base, "data": "synthetic", "distribution": "horovod:2", "images_per_sec": 90},
               {**base, "data": "records", "distribution": "horovod:2", "error": "boom"}]
    lines = benchmark.ratios(results)
    assert lines == [
        "records / synthetic (m, one_device, fp32, xla=False): 0.96x (target >= 0.95: "
        "training is not input-bound)",
        "cached_records / synthetic (m, one_device, fp32, xla=False): 0.99x (target >= 0.95: "
        "training is not input-bound)",
        "horovod:2 / one process (m, synthetic): 0.90x on the same cores (target >= 0.9: the "
        "distribution's overhead)"]


def test_time_to_accuracy_races_two_contenders_to_the_baselines_best(python, records, tmp_path):
    result = run([python, "-m", "trainer.benchmark", "--mode=time_to_accuracy",
                  f"--records={records}", f"--crop_size={TINY_CROP_SIZE}",
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


def test_time_to_target_is_the_first_evaluation_at_or_above_it():
    def race(name, points):
        return {"name": name, "model": "m", "recipe": "r", "precision": "fp32",
                "budget_seconds": 100, "images_per_sec": 10.0, "stopped": "budget",
                "curve": [{"seconds": s, "step": s, "accuracy": a, "accuracy_1off": a,
                           "smoothed": a} for s, a in points]}
    baseline = race("baseline", [(10, 0.3), (60, 0.5), (90, 0.45)])
    improved = race("improved", [(5, 0.4), (20, 0.5)])
    assert time_to_accuracy.time_to(baseline["curve"], 0.5) == 60
    assert time_to_accuracy.time_to(improved["curve"], 0.6) is None
    lines = time_to_accuracy.summary(baseline, [improved, race("improved 2", [(5, 0.4)])], 0.5)
    assert lines[-2:] == [
        "improved: 50.0% held-out exact accuracy 3.0x sooner than the baseline (20.0 s vs "
        "60.0 s; goal >= 3x)",
        "improved 2: never reached 50.0% (stopped by its budget after 5.0 s of training)"]


def test_a_contender_is_model_recipe_and_optional_precision():
    assert time_to_accuracy.contender("resnet:modern:mixed_bfloat16") == {
        "model": "resnet", "recipe": "modern", "precision": "mixed_bfloat16"}
    assert time_to_accuracy.contender("levi_hassner:paper")["precision"] == "fp32"
    with pytest.raises(ValueError, match="MODEL:RECIPE"):
        time_to_accuracy.contender("resnet")


def test_an_unknown_data_source_is_named(python, tmp_path):
    result = run([python, "-m", "trainer.benchmark", "--data=synthetic,tfrecords",
                  f"--out_dir={tmp_path}"])
    assert result.returncode == 2
    assert "--data tfrecords: not one of synthetic, records, cached_records" in result.stderr
