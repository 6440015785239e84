"""The loaders of docs/plain_pytorch.md rebuild exports in a process that cannot import consparse."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from consparse.compress.export import load_exported
from consparse.config import instantiate_node
from consparse.train import run

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plain_pytorch.md"
NO_CURVE = tuple(f"evaluation.compression_grid.{kind}=[]" for kind in ("unstructured", "filter", "lowrank"))
# Runs ahead of the documented code: any import of consparse fails, as on a machine without it.
BLOCKER = '''
import sys

class _NoConsparse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "consparse":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, _NoConsparse())
try:
    import consparse  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("consparse is importable")
'''
RUNNER = '''
import torch
from safetensors.torch import load_file, save_file

export_dir, inputs_file, call, outputs_file = sys.argv[1:]
model = eval(call, {**globals(), "EXPORT": export_dir})
with torch.no_grad():
    logits = model(load_file(inputs_file)["inputs"])
save_file({"logits": logits.contiguous()}, outputs_file)
'''

# (overrides of a tiny run on digits, how the documented functions load its export)
CASES = {
    "dense_mlp": (("debug=fast", "method=dense", "method.target_density=0.3"), "load_mlp(EXPORT)"),
    "magnitude_mlp": (("debug=fast", "method=magnitude", "method.target_density=0.3"), "load_mlp(EXPORT)"),
    "sfw_mlp": (("debug=fast", "method=sfw", "method.target_density=0.3"), "load_mlp(EXPORT)"),
    "l0_purged_mlp": (("method=l0", "method.target_density=0.2", "trainer.max_epochs=10", *NO_CURVE), "load_mlp(EXPORT)"),
    "implicit_fw": (("debug=fast", "method=implicit_fw", "model=implicit", "model.state_size=16"), "load_implicit(EXPORT)"),
    "sfw_resnet18": (("debug=fast", "method=sfw", "model=resnet18", "method.target_density=0.3"),
                     "load_torchvision_resnet(EXPORT, 'resnet18', 'cifar')"),
    "implicit_lasso": (("debug=fast", "method=implicit_lasso", "model.hidden=[24,12]", "method.target_density=0.3"),
                       "load_implicit(EXPORT)"),
}
SLOW = {"sfw_resnet18", "implicit_lasso", "magnitude_mlp", "sfw_mlp"}


def documented_code() -> str:
    return "\n".join(re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL))


def test_every_documented_loader_is_exercised() -> None:
    defined = set(re.findall(r"^def (load_\w+)", documented_code(), re.MULTILINE))
    called = {call.partition("(")[0] for _, call in CASES.values()}
    assert defined == called == {"load_mlp", "load_torchvision_resnet", "load_implicit"}


@pytest.mark.parametrize("case", [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else []) for name in CASES])
def test_export_loads_without_consparse(make_config, tmp_path: Path, case: str) -> None:
    overrides, call = CASES[case]
    cfg = make_config(*overrides)
    run(cfg)
    export_dir = tmp_path / "run" / "export"
    if case == "l0_purged_mlp":
        assert "layers.0.1.indices" in load_file(export_dir / "model.safetensors"), "the run must purge input features"
    datamodule = instantiate_node(cfg.dataset)
    inputs = next(iter(datamodule.test_dataloader()))[0][:32].contiguous()
    save_file({"inputs": inputs}, tmp_path / "inputs.safetensors")
    script = tmp_path / "plain.py"
    script.write_text(BLOCKER + documented_code() + RUNNER)
    # -I: no PYTHONPATH, no user site, not the current directory; the blocker stops an installed consparse.
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(export_dir), str(tmp_path / "inputs.safetensors"), call,
         str(tmp_path / "logits.safetensors")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = load_exported(export_dir)(inputs)
    plain = load_file(tmp_path / "logits.safetensors")["logits"]
    torch.testing.assert_close(plain, expected.to(plain.dtype), atol=1e-4, rtol=1e-4)
