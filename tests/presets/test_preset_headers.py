"""Every paper preset's header names its row, published number, deviations, hardware, cost and status.

The reproduction page (docs/reproduction.md) is read by people choosing what to run on a cluster:
a preset whose header leaves one of these out would send them in blind, so the header is checked
line by line rather than trusted.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "conf"
HARDWARE = {p.stem for p in (CONF / "hardware").glob("*.yaml")}
# The presets that stand for a paper's experiment; compare_* and the platform's own result presets do not.
PAPER_PREFIXES = ("l0_", "sfw_", "implicit_")
PAPER_PRESETS = sorted(
    p for p in (CONF / "experiment").glob("*.yaml") if p.name.startswith(PAPER_PREFIXES)
)
FIELDS = ("Paper", "Published", "Deviations", "Hardware", "Status")
STATUSES = ("run here", "ready, not run", "not reachable")


def header(path: Path) -> dict[str, str]:
    """The ``# Field: value`` lines of the leading comment block."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s*(\w+):\s*(.+)", line)
        if match and match.group(1) in FIELDS and match.group(1) not in found:
            found[match.group(1)] = match.group(2).strip()
    return found


def test_there_are_paper_presets() -> None:
    assert len(PAPER_PRESETS) >= 10


@pytest.mark.parametrize("path", PAPER_PRESETS, ids=lambda p: p.stem)
def test_paper_preset_header_is_complete(path: Path) -> None:
    fields = header(path)
    missing = [name for name in FIELDS if name not in fields]
    assert not missing, f"{path.name}: header lacks {missing}"
    assert re.search(r"Table|Figure|not a table row", fields["Paper"]), fields["Paper"]
    hardware = re.search(r"hardware=(\w+)", fields["Hardware"])
    assert hardware and hardware.group(1) in HARDWARE, fields["Hardware"]
    assert re.search(r"wall time", fields["Hardware"]), f"{path.name}: no expected wall time"
    assert fields["Status"].startswith(STATUSES), fields["Status"]
