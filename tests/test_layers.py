"""The dependency arrows point one way: core -> data/model/policy/train -> envs ->
eval/rl/serve -> commands. A module may import its own layer or lower ones, never a higher one."""

import ast
from pathlib import Path

import vla0

ROOT = Path(vla0.__file__).parent
CORE = {"bins", "config", "codec", "grammar", "images", "io", "options", "processor", "prompt"}
LAYERS = [  # lowest first
    CORE,
    {"data", "model", "policy", "train"},
    {"envs"},
    {"eval", "rl", "serve", "client"},
    {"cli", "quickstart"},
]


def layer(top: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top in names)


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vla0."):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("vla0."))


def test_no_module_imports_a_higher_layer():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # the package root's lazy exports
        own = layer(rel.parts[0].removesuffix(".py"))
        for module in imports(path):
            if layer(module.split(".")[1]) > own:
                bad.append(f"{rel} imports {module}")
    assert not bad, "\n".join(bad)


def test_every_module_is_in_a_layer_and_files_stay_short():
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts != ("__init__.py",):
            layer(rel.parts[0].removesuffix(".py"))
        assert len(path.read_text().splitlines()) <= 400, path
