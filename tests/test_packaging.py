"""What importing the package does to its host, and what it needs installed."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "connectivity"
# Import names whose distribution is called otherwise.
DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "art": "adversarial-robustness-toolbox",
}


def test_importing_report_and_figures_keeps_the_callers_matplotlib_backend() -> None:
    code = (
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import connectivity.reporting.report, connectivity.reporting.figures\n"
        "print(matplotlib.get_backend())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["svg"]
    # Our own code draws with matplotlib's Figure API only (torchmetrics, which Lightning
    # imports, imports pyplot itself; that import does not switch the backend).
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any("pyplot" in n for n in names), file


def _imported_packages() -> set[str]:
    """Top-level names of every module the package imports, anywhere in its files."""
    names: set[str] = set()
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"connectivity", "__future__"}


def test_every_imported_package_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
        for requirement in project["dependencies"]
    }
    imported = _imported_packages()
    assert {"torch", "numpy", "sklearn"} <= imported  # the parse sees real imports
    needed = {DISTRIBUTIONS.get(name, name).lower() for name in imported}
    assert needed - declared == set()
