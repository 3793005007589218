"""The README and the pages under docs/ point at things that exist.

Links resolve to files and headings, the files, configs, tests and benchmarks they name exist,
the module paths they cite import, and the YAML shown is the config it names.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _prose(page: Path) -> str:
    """The page without its fenced blocks (a `# comment` there is no heading)."""
    return FENCE.sub("", page.read_text())


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", _prose(page), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_reaches_a_file_and_heading(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"\w+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page.name}: {target} links to no file"
        if anchor:
            assert anchor in _anchors(linked), f"{page.name}: no heading #{anchor} in {file}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_named_repository_file_exists(page: Path) -> None:
    named = re.findall(
        r"(?<![\w/.<])((?:configs|tests|benchmarks|connectivity|docs|\.ci)/[\w./*-]*\w/?)",
        page.read_text(),
    )
    for path in named:
        if "*" in path:  # a glob the text means: at least one file matches
            assert list(REPO.glob(path)), f"{page.name}: nothing matches {path}"
        else:
            assert (REPO / path).exists(), f"{page.name}: {path} does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cited_module_path_imports(page: Path) -> None:
    for name in sorted(set(re.findall(r"`(connectivity(?:\.\w+)+)", page.read_text()))):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attribute in parts[cut:]:
                assert hasattr(found, attribute), f"{page.name}: {name} does not exist"
                found = getattr(found, attribute)
            break


def test_every_yaml_block_is_the_config_it_shows() -> None:
    configs = {
        path: yaml.safe_load(path.read_text()) for path in (REPO / "configs").rglob("*.yaml")
    }
    for page in PAGES:
        for language, block in FENCE.findall(page.read_text()):
            if language == "yaml":
                shown = yaml.safe_load(block)
                assert shown in configs.values(), f"{page.name}: a YAML block is no config"


def test_the_readme_keeps_the_commands_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = [block for language, block in FENCE.findall(readme) if language == "bash"]
    assert blocks[:2] == [
        'pip install -e ".[dev]"\nconnectivity quickstart\n',
        "python -m pytest\n",
    ]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci[-2:] == ['pip install -e ".[dev]"', "python -m pytest"]


def test_the_readme_maps_every_docs_page() -> None:
    readme = (REPO / "README.md").read_text()
    for page in (REPO / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
