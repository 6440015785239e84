"""Under Lightning DDP (2 CPU processes, gloo) Frank-Wolfe takes the same steps as one process on the
same global batch: gradients are all-reduced before ``step``, so every rank's LMO sees the same input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[2] / "src"

SCRIPT = textwrap.dedent(
    """
    import sys

    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, Subset, TensorDataset

    from consparse.optim import FrankWolfe
    from consparse.optim.constraints import ConstraintSpec, build_model_constraints

    GLOBAL_BATCH = 16


    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def train_dataloader(self):
            # Rank r takes samples r, r + world, ... in order: the per-rank batches of one step together
            # are exactly the single process's batch (Lightning's own sampler would shuffle).
            generator = torch.Generator().manual_seed(1)
            data = TensorDataset(torch.randn(64, 8, generator=generator), torch.randint(0, 3, (64,), generator=generator))
            world, rank = self.trainer.world_size, self.trainer.global_rank
            return DataLoader(Subset(data, range(rank, 64, world)), batch_size=GLOBAL_BATCH // world, shuffle=False)

        def configure_optimizers(self):
            spec = ConstraintSpec(kind="ksupport", k=0.3, value=5.0, table={"bias": "none"})
            groups = build_model_constraints(self.net, spec)
            optimizer = FrankWolfe([g.as_param_group() for g in groups], lr=0.2, momentum=0.9)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


    devices, out = int(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    module = Module()
    torch.save(module.net.state_dict(), f"{out}.init")
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module)
    torch.save(module.net.state_dict(), f"{out}.rank{trainer.global_rank}")
    """
)


def _train(tmp_path: Path, devices: int) -> str:
    script = tmp_path / "fw_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"devices{devices}"
    env = {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(
        [sys.executable, str(script), str(devices), str(out)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return str(out)


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_matches_a_single_process_on_the_same_global_batch(tmp_path: Path) -> None:
    single = torch.load(_train(tmp_path, 1) + ".rank0", weights_only=True)
    ddp = _train(tmp_path, 2)
    rank0 = torch.load(ddp + ".rank0", weights_only=True)
    rank1 = torch.load(ddp + ".rank1", weights_only=True)
    for name, tensor in single.items():
        # Ranks agree exactly (same all-reduced gradients, deterministic LMO) ...
        assert torch.equal(rank0[name], rank1[name]), name
        # ... and match one process up to the float summation order of the gradient average.
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-4, atol=1e-5)
    initial = torch.load(ddp + ".init", weights_only=True)
    assert not torch.allclose(rank0["0.weight"], initial["0.weight"]), "training did not move the weights"
