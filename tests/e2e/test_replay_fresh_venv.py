"""The README's first command, run as written in a fresh virtual environment.

CI runs it (``.ci/run`` sets ``COMPTROLLER_TEST_FRESH_VENV=1``); elsewhere it is opt-in with the same
variable, since it installs comptroller and its dependencies into a new venv. It installs from the
package indexes pip is configured with (the registry, and any local wheel directory or pip's wheel
cache, which pip reuses): no ``--system-site-packages``, no shortcut, the command as a newcomer
types it. Measured on the project's machine (2 cores, local wheel mirror configured for pip,
load ~3): 83 s for the whole test under ``nice``. It skips, saying why, only when ``python3 -m venv``
cannot work here (Debian without ``python3-venv``: no ``ensurepip``). The venv is made in the
test's directory instead of ``.venv``.
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


def _venv_missing() -> str | None:
    """Why ``python3 -m venv`` cannot make a venv with pip here, or None when it can."""
    probe = subprocess.run(["python3", "-c", "import venv, ensurepip"], capture_output=True, text=True, timeout=60,
                           check=False)
    if probe.returncode != 0:
        return f"python3 -m venv is unavailable here (apt install python3-venv): {probe.stderr.strip()[-200:]}"
    return None


@pytest.mark.skipif(os.environ.get("COMPTROLLER_TEST_FRESH_VENV") != "1",
                    reason="installs into a new venv (~1.5 min); CI runs it; set COMPTROLLER_TEST_FRESH_VENV=1 to run")
@pytest.mark.timeout(1200)
def test_readme_first_command_in_a_fresh_venv(tmp_path: Path) -> None:
    """A fresh venv with `pip install -e .` (no dev extra) runs the README's replay and writes its HTML report."""
    missing = _venv_missing()
    if missing is not None:
        pytest.skip(missing)
    command = _first_command().replace(".venv", str(tmp_path / "venv")).replace("replay.html",
                                                                              str(tmp_path / "replay.html"))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=1100,
                            check=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "total cost" in result.stdout
    assert (tmp_path / "replay.html").stat().st_size > 100_000
    venv_python = tmp_path / "venv" / "bin" / "python"
    dev_only = subprocess.run([str(venv_python), "-c", "import pytest"], capture_output=True, timeout=60, check=False,
                              env=env)
    assert dev_only.returncode != 0, "the fresh venv has pytest: it is not fresh (system site packages?)"
