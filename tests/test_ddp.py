"""``instaseg train`` under ``torchrun``: two CPU processes (gloo) train one model, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from instaseg.data.synth import make_synthetic
from instaseg.engine.checkpoint import read_checkpoint


def test_two_processes_train_with_ddp(tmp_path):
    train_json, val_json = make_synthetic(tmp_path / "data", num_train=8, num_val=2, size=64)
    script = tmp_path / "instaseg_cli.py"
    script.write_text("from instaseg.cli import main\nmain()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        "train",
        str(train_json),
        "--val",
        str(val_json),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--preset",
        "small",
        "--out",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    # 8 images split over 2 processes in batches of 2: 2 steps per epoch, each step seeing 4 images.
    assert last["train_state"]["iteration"] == 2
    assert not any(key.startswith("module.") for key in last["model"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_mask_mAP" in r for r in rows) == 1  # validated once, by rank 0 only
    assert done.stdout.count("best checkpoint:") == 2  # both ranks return the same path
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "curves.png").exists()


NAN_ON_RANK_1 = """
import os
import sys
import torch.distributed as dist
from instaseg.core.errors import InstasegError
from instaseg.data import Dataset
from instaseg.engine.config import TrainConfig
from instaseg.engine.hooks import HookBase
from instaseg.engine.train import train

class PoisonRank1(HookBase):
    def before_train(self):
        if dist.get_rank() == 1:
            self.trainer.model.register_forward_hook(
                lambda module, args, losses: {k: v * float("nan") for k, v in losses.items()})

try:
    train(TrainConfig(epochs=1, batch_size=2, preset="small"), Dataset.load(sys.argv[1]), None, out=sys.argv[2],
          hooks=[PoisonRank1()])
except InstasegError as exc:
    print(f"rank {os.environ['RANK']}: {exc}")
    sys.exit(2)
"""


def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    train_json, _ = make_synthetic(tmp_path / "data", num_train=8, num_val=2, size=64)
    script = tmp_path / "poisoned.py"
    script.write_text(NAN_ON_RANK_1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(train_json),
        str(tmp_path / "run"),
    ]
    # Unless the ranks agree on the check, rank 0 waits forever in the next all-reduce.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: the loss became non-finite" in done.stdout, done.stdout + done.stderr[-2000:]
