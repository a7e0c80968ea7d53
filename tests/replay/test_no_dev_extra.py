"""Replay needs nothing from the [dev] extra: it runs with every dev-only package made unimportable."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"

_SCRIPT = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("dev-only package imported: " + name)
        return None
sys.meta_path.insert(0, Block())
from comptroller.cli.main import app
sys.argv = ["comptroller", "replay", *sys.argv[2:]]
app()
"""

# distribution name -> import name, where they differ
_IMPORT_NAMES = {"pytest-timeout": "pytest_timeout", "pytest-benchmark": "pytest_benchmark", "bpe-openai": "bpe_openai",
                 "types-jsonschema": "jsonschema-stubs", "opentelemetry-sdk": "opentelemetry",
                 "opentelemetry-exporter-otlp-proto-common": "opentelemetry"}


def _dev_modules() -> list[str]:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    names = {spec.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip() for spec in extra}
    return sorted({_IMPORT_NAMES.get(n, n.replace("-", "_")) for n in names} | {"google"})


def test_replay_runs_without_dev_packages(tmp_path: Path) -> None:
    """The replay command (importers included) runs with the dev extra's packages blocked from import."""
    out = tmp_path / "r.json"
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, ",".join(_dev_modules()), str(FIXTURES / "otel_spans.json"),
         str(FIXTURES / "litellm_spend_logs.csv"), str(FIXTURES / "helicone_export.jsonl"),
         str(FIXTURES / "langfuse_observations.json"), "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.exists()
    assert "opentelemetry" in _dev_modules() and "pytest" in _dev_modules()
