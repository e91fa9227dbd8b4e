"""trainer.cross_validate: the paper's five folds, each trained and tested on its own fold,
and the table beside the published figures."""

import json

from conftest import TINY_CROP_SIZE, json_lines, run

FOLDS = ["--model=tiny", f"--crop_size={TINY_CROP_SIZE}", "--batch_size=16",
         "--learning_rate=0.05", "--steps=10"]


def test_five_folds_each_held_out_once_and_the_table(python, records, tmp_path):
    command = [python, "-m", "trainer.cross_validate", f"--records={records}",
               f"--model_dir={tmp_path}", *FOLDS]
    result = run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((records / "manifest.json").read_text())
    results = json.loads((tmp_path / "cross_validation.json").read_text())
    assert [r["fold"] for r in results] == [0, 1, 2, 3, 4]
    for r in results:
        assert r["examples"] == manifest["splits"][f"fold{r['fold']}"]["examples"]
        run_info = json.loads((tmp_path / f"fold{r['fold']}" / "run.json").read_text())
        assert run_info["eval_splits"] == [f"fold{r['fold']}"]
    assert "single crop  exact" in result.stdout and "49.5 +- 4.4" in result.stdout
    assert "over-sample  1-off" in result.stdout and "84.7 +- 2.2" in result.stdout

    again = run(command)  # every fold is finished: nothing trains, the table is the same
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [r for r in json_lines(again.stdout) if "train/loss" in r]
    assert json.loads((tmp_path / "cross_validation.json").read_text()) == results


def test_a_fold_that_does_not_exist_stops_before_training(python, records, tmp_path):
    result = run([python, "-m", "trainer.cross_validate", f"--records={records}",
                  f"--model_dir={tmp_path}", *FOLDS, "--folds=0,5"])
    assert result.returncode == 2
    assert "held-out fold 5 does not exist" in result.stderr
    assert not (tmp_path / "fold0").exists()
