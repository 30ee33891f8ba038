"""The documentation against the code: every configuration field described, the generated pages
(docs/configuration.md, the option tables of docs/cli.md, the presets of docs/graphs.md) as the
code renders them now, every command in docs/cli.md, every relative link and anchor in README.md
and docs/ resolving inside the repository, and a README short enough to read. No Ray."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from itemlens.workflows import config_reference
from itemlens.workflows.config_reference import COMMAND, github_anchor

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("model", config_reference.documented_models(), ids=lambda m: m.__name__)
def test_every_configuration_field_has_a_description(model):
    missing = [
        name for name, info in config_reference.own_fields(model).items() if not (info.description or "").strip()
    ]
    assert not missing, (
        f"{model.__name__} ({model.__module__}) has fields without a description: {', '.join(missing)}. "
        f"Add description=... to their Field(...) (docs/configuration.md is rendered from them), then run {COMMAND}"
    )


def test_every_model_nested_in_the_configuration_has_a_section():
    assert config_reference.unlisted_models() == [], "add these models to config_reference.SECTIONS"


def test_the_generated_pages_are_what_the_code_renders_now():
    # a fresh process: the registries as a user's command line sees them, without plug-ins other
    # tests registered in this one
    result = subprocess.run(
        [sys.executable, "-m", "itemlens.workflows.config_reference", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{result.stderr.strip()}\n(the code changed: run {COMMAND} and commit the pages)"


def test_the_cli_page_has_every_command_and_option():
    from itemlens.workflows.cli import build_parser

    page = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert len(commands) >= 12
    for name, sub in commands.items():
        assert f"### itemlens {name}\n" in page, f"docs/cli.md has no section for `itemlens {name}`"
        section = page.split(f"### itemlens {name}\n", 1)[1].split("\n### ", 1)[0]
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in section or f", {option}" in section, f"itemlens {name} {option}"


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", page.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            anchor = github_anchor(heading.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository: a fresh clone does not have it)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading with that anchor in {resolved.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_links_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n## Where the code differs from DESIGN.md\n[a](other.md#x) ![b](img.png) "
        "[c](https://example.com) [d](#top)\n```\n[e](in-code.md)\n```\n"
    )
    assert _links(page) == ["other.md#x", "img.png", "#top"]
    assert _anchors(page) == {"top", "where-the-code-differs-from-designmd"}


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the reference belongs in docs/"
    first_screen = "\n".join(lines[:25])
    assert "make demo" in first_screen and "make test" in first_screen
