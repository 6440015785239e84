"""``method=dense``: plain training (SGD or Adam, any scheduler).

With ``target_density`` set, the deployed model is the trained network magnitude-pruned to that
density without retraining: the baseline that compression-aware training (SFW) is judged against.
"""

from __future__ import annotations

import pytorch_lightning as pl

from consparse.compress.prune import prune_to_density
from consparse.methods.base import Deployment, SparseMethod
from consparse.validation import check_choice


class DenseMethod(SparseMethod):
    """Dense training; ``prune_scope`` (``global`` or ``layer``) applies when ``target_density`` is set."""

    def __init__(self, *args, prune_scope: str = "global", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_choice("prune_scope", prune_scope, ["global", "layer"])
        self.prune_scope = prune_scope

    def finalize(self, datamodule: pl.LightningDataModule) -> Deployment:
        model = self.model.eval()
        if self.target_density is None:
            return self.deployment(model)
        return self.deployment(prune_to_density(model, self.target_density, scope=self.prune_scope))
