"""README.md and docs/: every option of every command is on its command's page, every relative
link leads to a file (and to a heading there, when it names one), docs/index.md lists every page,
and the README stays a five-minute read."""
from __future__ import annotations

import re
from pathlib import Path

import click

from charrnn.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_BYTES = 15_000          # torch-rnn's and nanoGPT's READMEs are 10-12 KB (issue 26)

# A command's options are documented on docs/<its top-level name>.md. The exceptions: the group's
# own options and every command's --help are conventions (cli.md), and lr-find takes train's model,
# data and optimizer flags, which train.md documents once.
PAGES = {(): ("cli.md",), ("lr-find",): ("lr-find.md", "train.md")}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.M)


def commands(cmd: click.Command = cli, path: tuple[str, ...] = (), parent: click.Context | None = None):
    """(path, context) for the group and every command and subcommand under it, each context made
    under its parent's as a real invocation makes it (a subcommand inherits `-h`)."""
    ctx = click.Context(cmd, info_name=" ".join(("charrnn",) + path), parent=parent, **cmd.context_settings)
    yield path, ctx
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from commands(sub, path + (name,), ctx)


def pages_of(path: tuple[str, ...]) -> tuple[str, ...]:
    return PAGES.get(path) or PAGES.get(path[:1]) or (f"{path[0]}.md",)


def option_names() -> list[tuple[tuple[str, ...], str, tuple[str, ...]]]:
    """(command path, long option name, pages that must name it): every long name of every option,
    both halves of a --flag/--no-flag pair, hidden options too."""
    rows = []
    for path, ctx in commands():
        for p in ctx.command.get_params(ctx):
            if not isinstance(p, click.Option):
                continue
            is_help = "--help" in p.opts and not p.expose_value   # Click's own, on every command
            pages = PAGES[()] if is_help else pages_of(path)
            for name in (*p.opts, *p.secondary_opts):
                if name.startswith("--"):
                    rows.append((path, name, pages))
    return rows


def mentions(text: str, option: str) -> bool:
    """`--lr` as a word of its own: not the start of `--lr-floor`, not the end of `--no-lr`."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def relative_links(md: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", md.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def test_every_option_of_every_command_is_on_its_commands_page():
    rows = option_names()
    names = {name for _, name, _ in rows}
    # the walk reaches subcommands, flag pairs' --no- halves, hidden options and the group's own
    assert {"--force", "--no-diag", "--no-echo", "--max-steps", "--version", "--help", "--half"} <= names
    missing = []
    for path, name, pages in rows:
        cmd = " ".join(("charrnn",) + path)
        texts = []
        for page in pages:
            if not (DOCS / page).is_file():
                missing.append(f"{cmd} has no page docs/{page}")
                continue
            texts.append((DOCS / page).read_text(encoding="utf-8"))
        if texts and not any(mentions(t, name) for t in texts):
            missing.append(f"{name} of `{cmd}` is on none of {', '.join('docs/' + p for p in pages)}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_the_option_check_tells_an_option_from_a_longer_one():
    assert mentions("`--lr-floor F` and `--diag/--no-diag`", "--no-diag")
    assert mentions("`--diag/--no-diag`", "--diag")
    assert not mentions("`--lr-floor F`", "--lr")
    assert not mentions("--no-echo", "--echo")


def test_every_relative_link_in_the_readme_and_docs_leads_to_a_file_and_heading():
    broken = []
    for md in markdown_files():
        for target in relative_links(md):
            file_part, _, anchor = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md
            where = f"{md.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where} leads to no file")
            elif anchor and dest.suffix == ".md":
                anchors = {slug(h) for h in HEADING.findall(FENCE.sub("", dest.read_text(encoding="utf-8")))}
                if anchor not in anchors:
                    broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_the_docs_index_lists_every_page():
    linked = {(DOCS / t.partition("#")[0]).resolve() for t in relative_links(DOCS / "index.md")}
    unlisted = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "index.md" and p.resolve() not in linked]
    assert not unlisted, f"docs/index.md does not link {', '.join(unlisted)}"


def test_the_readme_is_a_five_minute_read():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes: move detail into docs/"
    assert "docs/index.md" in README.read_text(encoding="utf-8")
