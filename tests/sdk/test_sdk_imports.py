"""The SDK's modules import each other without a circle, and none imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import comptroller.sdk

SDK = Path(comptroller.sdk.__file__).parent


def imports() -> dict[str, set[str]]:
    """Each SDK module -> the SDK modules it imports (at any depth of its body)."""
    graph: dict[str, set[str]] = {}
    for path in SDK.glob("*.py"):
        found = {node.module for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("comptroller.sdk.")}
        graph[f"comptroller.sdk.{path.stem}"] = found
    return graph


def test_sdk_modules_form_no_import_circle() -> None:
    """A depth-first walk of the SDK's import graph never comes back to a module on its own path."""
    graph = imports()
    assert {"comptroller.sdk.governor", "comptroller.sdk.openai", "comptroller.sdk.anthropic"} <= graph.keys()

    def circle_from(module: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if module in path:
            return (*path, module)
        for imported in graph.get(module, ()):
            found = circle_from(imported, (*path, module))
            if found:
                return found
        return None

    circles = [c for m in graph if (c := circle_from(m, ())) is not None]
    assert circles == []


def test_no_sdk_module_imports_a_private_name() -> None:
    """``from x import _name`` appears nowhere in the SDK."""
    private = [(path.name, alias.name) for path in SDK.glob("*.py")
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
               for alias in node.names if alias.name.startswith("_")]
    assert private == []
