"""launch/reproduce.sh: the paper's protocol and the improved bundle's in one command, end to end
on a small synthetic Adience tree (a tiny network, 3 steps a fold), and the time estimate each
starts with."""

import json

import pytest

from conftest import TINY_CROP_SIZE, TINY_RECORD_SIZE, json_lines, run

SMALL = ["--model=tiny", f"--crop_size={TINY_CROP_SIZE}", "--batch_size=16", "--steps=3",
         "--time_steps=3"]
FINAL_CROPS = 1 + 10  # each fold's last checkpoint, tested with the center crop and 10 crops
BUNDLES = ("paper", "improved")


def reproduce(adience_dir, run_dir):
    return run(["bash", "launch/reproduce.sh", adience_dir, *SMALL],
               env={"REPRODUCE_DIR": str(run_dir),
                    "REPRODUCE_IMAGE_SIZE": str(TINY_RECORD_SIZE)}, timeout=600)


def the_estimates(stdout):
    """Each protocol's estimate, in the order they ran."""
    estimates = [r for r in json_lines(stdout) if r.get("event") == "estimate"]
    assert len(estimates) == len(BUNDLES), stdout[-3000:]
    return estimates


def test_the_paper_protocol_from_a_download_to_the_table(synthetic_tree, tmp_path):
    result = reproduce(synthetic_tree, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((tmp_path / "records" / "manifest.json").read_text())
    assert {key: manifest["settings"][key] for key in
            ("task", "age_labels", "layout", "protocol", "source", "image_size")} == {
        "task": "age", "age_labels": "paper", "layout": "aligned", "protocol": "folds",
        "source": str(synthetic_tree), "image_size": TINY_RECORD_SIZE}
    held_out = [manifest["splits"][f"fold{fold}"]["examples"] for fold in range(5)]

    for estimate in the_estimates(result.stdout):
        assert estimate["folds"] == [0, 1, 2, 3, 4] and estimate["fold_steps"] == [3] * 5
        assert estimate["train_steps"] == 15
        assert estimate["timed_steps"] + estimate["warmup_steps"] == 3
        assert estimate["timed_steps"] >= 1 and estimate["seconds_per_step"] > 0
        assert estimate["images_per_sec"] == pytest.approx(16 / estimate["seconds_per_step"])
        # 3 steps are less than an epoch: one center-crop evaluation at the end of training.
        assert estimate["eval_images"] == sum(held_out) * (1 + FINAL_CROPS)
        assert estimate["train_seconds"] == pytest.approx(15 * estimate["seconds_per_step"])
        assert estimate["total_seconds"] == pytest.approx(
            estimate["train_seconds"] + estimate["eval_seconds"])
        assert estimate["eval_seconds"] > 0 and estimate["assumed_gpu_seconds"] > 0
    assert result.stdout.count("estimate on this machine:") == len(BUNDLES)
    assert result.stdout.count("on one GPU, assumed (no GPU step measured)") == len(BUNDLES)

    results = {}
    for bundle in BUNDLES:
        results[bundle] = json.loads((tmp_path / bundle / "cross_validation.json").read_text())
        assert [(r["fold"], r["examples"]) for r in results[bundle]] == list(enumerate(held_out))
        run_info = json.loads((tmp_path / bundle / "fold0" / "run.json").read_text())
        assert run_info["model"] == "tiny"  # the flags given win over the bundle's
        # ...and the bundle gives the rest: the improved one's recipe, precision and data.
        assert (run_info["recipe"]["name"], run_info["precision"], run_info["data"]) == {
            "paper": ("paper", "fp32", "records"),
            "improved": ("modern", "mixed_bfloat16", "resident")}[bundle]
    tables = result.stdout.split("The tables beside Levi & Hassner's")[1]
    for bundle in BUNDLES:
        assert f"age, 5 folds: ours, the {bundle} bundle (mean +- std)" in tables
    assert tables.count("50.7 +- 5.1") == tables.count("84.7 +- 2.2") == len(BUNDLES)

    again = reproduce(synthetic_tree, tmp_path)  # the records kept, every fold already done
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "reusing them" in again.stdout and "wrote " not in again.stdout
    assert [e["train_steps"] for e in the_estimates(again.stdout)] == [0] * len(BUNDLES)
    assert not [r for r in json_lines(again.stdout) if "train/loss" in r]
    for bundle in BUNDLES:
        assert json.loads((tmp_path / bundle / "cross_validation.json").read_text()) == (
            results[bundle])


def test_a_missing_adience_dir_is_named(tmp_path):
    missing = tmp_path / "no_such_download"
    result = run(["bash", "launch/reproduce.sh", missing], env={"REPRODUCE_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert f"ADIENCE_DIR {missing} is not an Adience download" in result.stderr
    assert "usage: bash launch/reproduce.sh ADIENCE_DIR" in result.stderr
    assert not (tmp_path / "records").exists()

    result = run(["bash", "launch/reproduce.sh"], env={"REPRODUCE_DIR": str(tmp_path)})
    assert result.returncode == 2 and "no ADIENCE_DIR given" in result.stderr
    assert not (tmp_path / "records").exists()


def test_an_unknown_bundle_is_named_before_anything_is_built(synthetic_tree, tmp_path):
    result = run(["bash", "launch/reproduce.sh", synthetic_tree],
                 env={"REPRODUCE_DIR": str(tmp_path), "REPRODUCE_BUNDLES": "paper quick"})
    assert result.returncode == 2
    assert "REPRODUCE_BUNDLES names 'quick'; known bundles: improved, paper" in result.stderr
    assert not (tmp_path / "records").exists()


def test_timing_steps_first_changes_no_result(python, records, tmp_path):
    fold0 = [python, "-m", "trainer.cross_validate", f"--records={records}", "--folds=0",
             "--model=tiny", f"--crop_size={TINY_CROP_SIZE}", "--batch_size=16",
             "--learning_rate=0.05", "--steps=3", "--log_every=1", "--deterministic"]
    outcomes = []
    for name, extra in (("plain", []), ("timed", ["--time_steps=3"])):
        result = run([*fold0, f"--model_dir={tmp_path / name}", *extra])
        assert result.returncode == 0, result.stderr[-3000:]
        metrics = (tmp_path / name / "fold0" / "metrics.jsonl").read_text()
        losses = [r["train/loss"] for r in json_lines(metrics) if "train/loss" in r]
        [fold] = json.loads((tmp_path / name / "cross_validation.json").read_text())
        outcomes.append((losses, fold["1"], fold["10"]))
    assert len(outcomes[0][0]) == 3  # the timed steps wrote nothing into the fold
    assert outcomes[1] == outcomes[0]
