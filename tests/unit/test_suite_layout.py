"""The test suite's own layout: no test module imports from another one. What several modules
share lives in a helper module (``tests/helpers.py`` and the like), so that a test module can
be moved, split or run alone without dragging the others in."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def module_name(path: Path, root: Path = ROOT) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def is_test_module(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith("test_")


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every module ``path`` imports, wherever in it (relative imports
    resolved; ``from package import name`` also counted as importing ``package.name``, which it
    does when ``name`` is a module)."""
    package = module_name(path, root).rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def cross_test_imports(paths, root: Path = ROOT) -> list[str]:
    offenders = []
    for path in paths:
        for lineno, module in imported_modules(path, root):
            if module.startswith("tests.") and is_test_module(module) and module != module_name(path, root):
                offenders.append(f"{path.relative_to(root)}:{lineno} imports {module}")
    return offenders


def test_no_test_module_imports_from_another():
    offenders = cross_test_imports(sorted(TESTS.rglob("test_*.py")))
    assert not offenders, ("test modules import from other test modules; move what they share to "
                           "tests/helpers.py:\n" + "\n".join(offenders))


def test_the_check_finds_every_form_of_import(tmp_path):
    package = tmp_path / "tests" / "integration"
    package.mkdir(parents=True)
    sources = {
        "test_plain.py": "from tests.integration.test_other import helper\n",
        "test_module.py": "import tests.integration.test_other\n",
        "test_package.py": "from tests.integration import test_other\n",
        "test_relative.py": "def f():\n    from .test_other import helper\n",
        "test_fine.py": "from tests.helpers import wait_for\nfrom tests.integration.adapter_harness import HI\n",
    }
    for name, source in sources.items():
        (package / name).write_text(source)
    offenders = cross_test_imports(sorted(package.glob("test_*.py")), root=tmp_path)
    assert sorted(o.split(":")[0] for o in offenders) == sorted(
        f"tests/integration/{name}" for name in sources if name != "test_fine.py")
