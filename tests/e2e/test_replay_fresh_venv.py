"""The README's first command, run as written in a fresh virtual environment (opt-in: it installs from the registry).

Set ``COMPTROLLER_TEST_FRESH_VENV=1`` to run it (it needs the package registry and a few minutes);
otherwise it skips and says so. The venv is made in the test's directory instead of ``.venv``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _first_command() -> str:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert block is not None
    return block.group(1).splitlines()[0]


@pytest.mark.skipif(os.environ.get("COMPTROLLER_TEST_FRESH_VENV") != "1",
                    reason="installs from the package registry; set COMPTROLLER_TEST_FRESH_VENV=1 to run")
@pytest.mark.timeout(1200)
def test_readme_first_command_in_a_fresh_venv(tmp_path: Path) -> None:
    """A fresh venv with `pip install -e .` (no dev extra) runs the README's replay and writes its HTML report."""
    command = _first_command().replace(".venv", str(tmp_path / "venv")).replace("replay.html",
                                                                              str(tmp_path / "replay.html"))
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=1100,
                            check=False, env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "total cost" in result.stdout
    assert (tmp_path / "replay.html").stat().st_size > 100_000
