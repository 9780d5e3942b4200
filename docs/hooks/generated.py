"""MkDocs hook: pages generated at build time, so nothing is written twice.

- reference/cli.md: every `vla0` subcommand and its options, read from the argparse parser that
  vla0.cli builds from the config dataclasses (vla0.options): flag, type, default and help are the
  dataclass field's. Adding a field to a config adds it here.
- results.md: every table of measurements in the manual, with the paragraph naming its command.
- assets/bench/*.png: the plots under bench/results/ that pages show, served from where the
  benchmarks write them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]


def _cell(text: str) -> str:
    # [brackets] would read as cross-references to mkdocstrings' autorefs
    return str(text).replace("|", "\\|").replace("\n", " ").replace("[", "\\[").replace("]", "\\]")


def _flag(action: argparse.Action) -> str:
    flags = " ".join(f"`{s}`" for s in action.option_strings)
    if action.metavar or action.choices:
        flags += f" {action.metavar or '{' + ','.join(map(str, action.choices)) + '}'}"
    elif action.nargs not in (None, 0) and not isinstance(action, argparse.BooleanOptionalAction):
        flags += f" ({action.nargs} values)"
    return flags


def cli_reference() -> str:
    from vla0.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    out = ["# CLI reference\n",
           "Generated when the site is built, from the option dataclasses in `vla0/options.py` and the "
           "configs that use them (for example `vla0.train.trainer.TrainConfig`): `vla0 COMMAND --help` "
           "prints the same.\n"]
    for name, p in sub.choices.items():
        out.append(f"## vla0 {name}\n\n{_cell(helps.get(name) or p.description or '')}\n")
        groups = [(g.title, [a for a in g._group_actions if a.dest != "help" and a.option_strings])
                  for g in p._action_groups]
        positionals = [a for a in p._actions if not a.option_strings]
        if positionals:
            out.append("| argument | help |\n|---|---|\n" + "".join(
                f"| `{a.dest}` | {_cell(a.help or '')} |\n" for a in positionals))
        for title, actions in groups:
            if not actions:
                continue
            if title not in ("options", "optional arguments"):
                out.append(f"**{title}**\n")
            out.append("| option | help |\n|---|---|\n" + "".join(
                f"| {_flag(a)} | {_cell(a.help or '')} |\n" for a in actions))
    return "\n".join(out)


def on_files(files, config):
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    files.append(File.generated(config, "results.md", content=results_page(Path(config["docs_dir"]))))
    for png in sorted((ROOT / "bench" / "results").glob("*.png")):
        files.append(File.generated(config, f"assets/bench/{png.name}", abs_src_path=str(png)))
    return files


# -- results.md: every measured table of the manual, with the text that says how it was measured --
RESULT_PAGES = ["getting-started.md", "training.md", "decoding.md", "libero.md", "rl-overview.md", "two-stage.md",
                "deploy.md", "scale.md", "lerobot.md", "evaluation.md"]


def results_page(docs: Path) -> str:
    out = ["# Results\n",
           "Every benchmark table of this manual, gathered when the site is built from the pages that "
           "explain it; each comes with the paragraph before it, which names the command and the JSON "
           "file behind the numbers. Follow the link for the full discussion.\n"]
    for name in RESULT_PAGES:
        path = docs / name
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        title = next((l[2:].strip() for l in lines if l.startswith("# ")), name)
        heading, fence, i = title, False, 0
        blocks = []
        while i < len(lines):
            line = lines[i]
            if line.startswith("```"):
                fence = not fence
            if not fence and line.startswith("#"):
                heading = line.lstrip("#").strip()
            if not fence and line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= set("-: "):
                start = i  # back over blank lines, then over the paragraph that introduces the table
                while start > 0 and not lines[start - 1].strip():
                    start -= 1
                while start > 0 and lines[start - 1].strip() and not lines[start - 1].startswith(("#", "|", "```")):
                    start -= 1
                end = i
                while end < len(lines) and lines[end].startswith("|"):
                    end += 1
                blocks.append((heading, "\n".join(lines[start:end])))
                i = end
                continue
            i += 1
        for heading, block in blocks:
            out.append(f"## {heading}\n\nFrom [{title}]({name}).\n\n{block}\n")
    return "\n".join(out)
