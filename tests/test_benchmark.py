"""trainer.benchmark: a small matrix measured for real (tiny model, one process and two Horovod
processes, synthetic and records), its table, JSON lines and ratios."""

import json

from conftest import TINY_CROP_SIZE, run
from trainer import benchmark


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


def test_ratios_pair_each_cell_with_its_twin():
    base = {"model": "m", "global_batch_size": 8, "precision": "fp32", "xla": False}
    results = [{**base, "data": "synthetic", "distribution": "one_device", "images_per_sec": 100},
               {**base, "data": "records", "distribution": "one_device", "images_per_sec": 96},
               {**base, "data": "synthetic", "distribution": "horovod:2", "images_per_sec": 90},
               {**base, "data": "records", "distribution": "horovod:2", "error": "boom"}]
    lines = benchmark.ratios(results)
    assert lines == [
        "records / synthetic (m, one_device, fp32, xla=False): 0.96x (target >= 0.95: "
        "training is not input-bound)",
        "horovod:2 / one process (m, synthetic): 0.90x on the same cores (target >= 0.9: the "
        "distribution's overhead)"]
