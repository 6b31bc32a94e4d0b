"""`accelerate launch --config_file` with two real CPU processes gives the weights of one process on the
same global batch. (torchrun is tested in test_accelerate_multiprocess.py and test_real_models.py,
`notebook_launcher` by a cell of nbs/02_accelerate.ipynb.)"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from support import SCRIPT, assert_same, one_process

# Accelerate starts several processes through torchrun only for the MULTI_GPU type; on a machine
# without a GPU AccelerateCB then runs them on the CPU (gloo). MULTI_CPU needs mpirun.
CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
num_processes: 2
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
use_cpu: false
"""


def accelerate_launch(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "config.yaml").write_text(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
           str(tmp_path / "config.yaml"), str(SCRIPT), str(tmp_path / "out.pt"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_accelerate_launch_with_a_config_file_runs_two_processes_on_the_cpu(tmp_path):
    res = accelerate_launch(tmp_path, CONFIG, "--loss", "weighted", "--bs", "4", "--gas", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same(torch.load(tmp_path / "out.pt", weights_only=True), one_process("weighted", 16))


def test_a_multi_cpu_config_without_mpi_starts_one_process(tmp_path):
    # What the guide to several processes warns about: the script runs, alone, with its per-process batch size.
    config = CONFIG.replace("MULTI_GPU", "MULTI_CPU").replace("use_cpu: false", "use_cpu: true")
    res = accelerate_launch(tmp_path, config, "--loss", "weighted", "--bs", "8")
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same(torch.load(tmp_path / "out.pt", weights_only=True), one_process("weighted", 8))
