"""Two processes, one ICAETrainer script, unchanged: gradients are synchronised and every rank ends identical."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("distributed_training_script.py")


def free_port() -> int:
    """A port no other test run is using now (the default 29500 collides when suites run side by side)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_training_with_accelerate_launch(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    # `--multi_gpu` picks accelerate's torchrun launcher; the script's `use_cpu=True` makes it gloo DDP on CPU.
    command = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        str(tmp_path),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]

    log = json.loads((tmp_path / "log.json").read_text())
    assert log["world_size"] == 2
    assert min(log["losses"][-3:]) < log["losses"][0]
    initial, final = load_file(tmp_path / "initial-0.safetensors"), load_file(tmp_path / "final-0.safetensors")
    other = load_file(tmp_path / "final-1.safetensors")
    assert any(not torch.equal(final[name], initial[name]) for name in initial)
    assert final.keys() == other.keys()
    for name in final:
        torch.testing.assert_close(other[name], final[name], msg=name)
