"""launch/gpu_check.sh: without a GPU it says so and exits 4 at once; --cpu runs the whole
sequence (distcheck under mirrored, Horovod and 2 multi_worker processes, then the benchmark
cells) on the CPU and ends with one verdict table, its JSON lines and its chart."""

import json
import time

import pytest

from conftest import REPO, run
from launch import launcher
from trainer.bench import gpu_steps

TINY = ["--models=tiny", "--check_model=tiny", "--check_batch_size=8", "--crop_size=32",
        "--per_replica_batch_size=8", "--warmup_steps=1", "--window_steps=2", "--windows=1"]


def test_without_a_gpu_it_says_so_and_exits_4_at_once(tmp_path):
    started = time.monotonic()
    result = run(["bash", "launch/gpu_check.sh", f"--out_dir={tmp_path / 'out'}"],
                 env={"PATH": "/usr/bin:/bin"})  # no nvidia-smi: no GPU
    assert result.returncode == 4, result.stderr[-3000:]
    assert "no GPU here" in result.stderr and "--cpu" in result.stderr
    assert time.monotonic() - started < 20  # no TensorFlow imported, nothing run
    assert not (tmp_path / "out").exists()


def test_the_cpu_sequence_checks_every_distribution_and_measures_its_cells(tmp_path, records):
    out = tmp_path / "out"
    result = run(["bash", "launch/gpu_check.sh", "--cpu", f"--out_dir={out}",
                  f"--records={records}", *TINY], timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout[result.stdout.index("== verdict"):]
    for check in ("mirrored, 2 CPUs in one process", "Horovod, 2 ranks",
                  "multi_worker, 2 local processes of 1 CPU"):
        assert any(line.startswith(check) and " AGREE " in line
                   for line in table.splitlines()), table
    assert "collectives: " in table
    assert "scaling: 2 CPUs mirrored fp32 / 1 CPU fp32: " in table
    assert "verdict: PASS" in table
    lines = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    kinds = [line["kind"] for line in lines]
    assert kinds == ["devices"] + ["distcheck"] * 3 + ["records"] + ["cell"] * 3
    checks = [line for line in lines if line["kind"] == "distcheck"]
    assert [c["reports"][0]["strategy"] for c in checks] == ["mirrored", "horovod",
                                                             "multi_worker"]
    assert all(c["agree"] and c["replicas"] == 2 and len(c["reports"]) == n
               for c, n in zip(checks, (1, 2, 2)))
    # Every Horovod rank says which collectives the environment's Horovod was built with.
    assert {r["horovod_collectives"] for r in checks[1]["reports"]} == {checks[1]["collectives"]}
    cells = [line for line in lines if line["kind"] == "cell"]
    assert [c["name"] for c in cells] == ["1 CPU fp32", "1 CPU fp32 records",
                                          "2 CPUs mirrored fp32"]
    assert all(c["images_per_sec"] > 0 and c["roof_flops"] > 0 for c in cells)
    assert (out / "benchmark.png").stat().st_size > 0


@pytest.mark.skipif(launcher.gpu_count() == 0, reason="needs an NVIDIA GPU (nvidia-smi lists none)")
def test_on_a_gpu_machine_tensorflow_sees_every_gpu_and_mirrored_agrees():
    gpus = launcher.gpu_count()
    steps = gpu_steps.Steps(cpu=False, timeout_seconds=600)
    devices = steps.devices(gpus)
    assert len(devices["gpus"]) == gpus, devices
    check = steps.distcheck_mirrored(gpus, ["--model=tiny", f"--batch_size={8 * gpus}"])
    assert check["agree"] and check["replicas"] == gpus, check


def test_a_gpu_node_runs_one_change_at_a_time_then_every_gpu():
    names = [name for name, _ in gpu_steps.cells(8, ["levi_hassner", "resnet"], False, 64,
                                                 227, "records")]
    assert names == ["1 GPU fp32", "1 GPU fp16", "1 GPU bf16", "1 GPU fp16 XLA",
                     "1 GPU fp16 records", "1 GPU fp16 resnet", "8 GPUs mirrored fp16",
                     "8 GPUs mirrored fp16 records", "8 GPUs horovod fp16"]
    every = dict(gpu_steps.cells(8, ["levi_hassner"], False, 64, 227, "records"))
    assert every["8 GPUs horovod fp16"]["global_batch_size"] == 8 * 64  # 64 per GPU


def test_a_gpu_node_measures_the_inter_op_threads_of_one_process_driving_every_gpu():
    planned = gpu_steps.cells(8, ["levi_hassner"], False, 64, 227, "records")
    sweep = gpu_steps.inter_op_sweep(planned, 8, 96)  # launch/host.py's own rule: 16
    assert [(name, environment) for name, _, environment in sweep] == [
        ("8 GPUs mirrored fp16 inter-op 2", {"TF_NUM_INTEROP_THREADS": "2"}),
        ("8 GPUs mirrored fp16 inter-op 96", {"TF_NUM_INTEROP_THREADS": "96"})]
    assert all(cell == dict(planned)["8 GPUs mirrored fp16"] for _, cell, _ in sweep)


def test_each_multi_worker_process_gets_its_half_of_the_gpus():
    environments = gpu_steps.worker_environments(2, 8, cpu=False, visible="0,1,2,3,4,5,6,7")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in environments] == ["0,1,2,3", "4,5,6,7"]
    configs = [json.loads(e["TF_CONFIG"]) for e in environments]
    assert configs[0]["cluster"] == configs[1]["cluster"]
    assert [c["task"]["index"] for c in configs] == [0, 1]
    # Ids of a machine where CUDA_VISIBLE_DEVICES already narrowed the GPUs are kept.
    shares = gpu_steps.worker_environments(2, 4, cpu=False, visible="2,3,5,7")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in shares] == ["2,3", "5,7"]


def test_a_disagreeing_check_fails_the_verdict():
    devices = {"cores": 2, "tensorflow": "2.21.0"}
    checks = [{"name": "Horovod, 2 ranks", "agree": False, "seconds": 9,
               "largest_difference": 0.08, "collectives": "Gloo through host memory"}]
    records = {"path": "r", "ok": True, "given": True, "seconds": 0}
    text = gpu_steps.verdict(devices, checks, records, [], 2, cpu=True)
    assert "Horovod, 2 ranks" in text and "DISAGREE" in text and "8.0e-02" in text
    assert text.splitlines()[-1] == "verdict: FAIL: Horovod, 2 ranks"


def test_the_script_needs_the_environment(tmp_path):
    result = run(["bash", REPO / "launch" / "gpu_check.sh", "--cpu"],
                 env={"VENV": str(tmp_path / "missing")})
    assert result.returncode == 2
    assert f"{tmp_path / 'missing'}/bin/python not found" in result.stderr
