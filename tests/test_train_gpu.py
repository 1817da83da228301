"""The trainer and the throughput benchmark on CUDA (skipped without a GPU)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import blocks
from pipeline.config import load_trial_config
from pipeline.train import fit

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_fit_on_cuda_counts_macs_and_trains(tmp_path):
    # Trial counts MACs with a CPU input: it must do so before the model moves to the GPU.
    cfg = load_trial_config(None, base={
        "model": {"backbone": "cifar_resnet20", "attention": "se"},
        "data": {"dataset": "synthetic", "synthetic": {"num_classes": 4, "image_size": 16, "train_count": 64,
                                                       "val_count": 16}, "batch_size": 16, "workers": 0,
                 "backend": "torch"},
        "optim": {"epochs": 1, "lr": 0.05}, "device": "cuda", "channels_last": True,
        "work_dir": str(tmp_path), "tracking": {"enabled": False}})
    s = fit(cfg)
    assert s["status"] == "finished" and s["gmacs"] > 0


def test_train_throughput_full_mode_runs():
    r = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--size", "full", "--only", "se",
                        "--no-model-level", "--batch", "8", "--steps", "2", "--repeats", "1", "--res", "64"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| se |" in r.stdout and "| baseline |" in r.stdout


@pytest.mark.parametrize("name", blocks.names("stage"))
def test_bfloat16_autocast_on_cuda_stays_close_to_float32(name):
    """tests/test_blocks.py's bf16 check on CUDA, where ``precision: bf16`` trains (cuBLAS and
    cuDNN bf16 kernels, not the CPU's)."""
    from benchmarks.bf16_error import bf16_error, sample_input

    y, g = bf16_error(name, sample_input(device="cuda"))
    assert y < 0.015, f"{name}: output {y:.4f} from float32"
    assert g < 0.1, f"{name}: input gradient {g:.4f} from float32"
