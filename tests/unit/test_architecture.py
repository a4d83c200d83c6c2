"""The map stays true: docs/architecture.md names every module, and the import contracts it states
(``[tool.importlinter]`` in pyproject.toml) hold, each layer list naming every module of its package."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("api", "worker", "shared", "client", "deploy")
MAP = ROOT / "docs" / "architecture.md"


def modules() -> list[str]:
    """Every module of the rooms, as its path from the repository's root (Lua scripts included)."""
    found = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*")):
            if path.suffix in (".py", ".lua") and "__pycache__" not in path.parts:
                if path.name == "__init__.py" and not path.read_text().strip():
                    continue  # an empty package marker says nothing
                found.append(path.relative_to(ROOT).as_posix())
    return found


def test_the_map_names_every_module():
    text = MAP.read_text()

    def named(module: str) -> bool:
        if f"`{module}`" in text:
            return True
        # A package's __init__ is named by the package's folder.
        return module.endswith("/__init__.py") and f"`{module.removesuffix('__init__.py')}`" in text

    missing = [m for m in modules() if not named(m)]
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"


def test_the_map_names_no_module_that_is_gone():
    import re

    named = set(re.findall(r"`((?:api|worker|shared|client|deploy)/[\w/]+\.(?:py|lua))`", MAP.read_text()))
    gone = sorted(n for n in named if not (ROOT / n).exists())
    assert not gone, f"docs/architecture.md names modules that do not exist: {', '.join(gone)}"


def test_the_import_contracts_hold():
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_every_layered_package_places_each_of_its_modules():
    # ``exhaustive`` makes import-linter refuse a layers contract that leaves a child out: a new
    # module must be placed, and so, by the test above, never imports back up.
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layered = [c for c in contracts if c["type"] == "layers"]
    assert {c["containers"][0] for c in layered} >= {"api", "worker", "api.sgp", "api.openai", "worker.providers"}
    assert all(c.get("exhaustive") for c in layered)
