"""The options tables of the docs, generated from the methods' options dataclasses: one
row per field (its name, default, type and the one-line ``help`` of its metadata,
``field(default=..., metadata={"help": "..."})``).

A table sits between ``<!-- options: <model_name> -->`` and ``<!-- end options -->``, in any
page under ``docs/``; a method's own page, ``docs/methods/<module>.md`` (its learner's
module in ``models/``), must hold its table. ``python -m toolbox.docs_options`` rewrites
every table; ``--check`` only says which pages are stale (exit 1), as the tests do.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import MISSING, fields
from typing import List, Optional, Sequence

from toolbox.registry import LEARNERS, options_class
from utils.config import describe, field_hints

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
BLOCK = re.compile(r"(<!-- options: (\w+) -->\n)(.*?)(<!-- end options -->)", re.S)


def page_of(model: str) -> str:
    """The page that documents ``model``, under ``docs/``: ``methods/<its learner's module>.md``."""
    return "methods/" + LEARNERS[model].split(":")[0].split(".")[-1] + ".md"


def fields_without_help(cls: type) -> List[str]:
    """The fields of options class ``cls`` with no one-line help (missing, empty or several lines)."""
    return [f.name for f in fields(cls) if not isinstance(f.metadata.get("help"), str)
            or not f.metadata["help"].strip() or "\n" in f.metadata["help"]]


def options_table(model: str) -> str:
    """The markdown table of ``model``'s options (defaults = the official values)."""
    cls = options_class(model)
    hints = field_hints(cls)
    rows = ["| option | default | type | what it is |", "|---|---|---|---|"]
    for f in fields(cls):
        default = f.default_factory() if f.default is MISSING else f.default
        rows.append(f"| `{f.name}` | `{json.dumps(default)}` | {describe(hints[f.name])} | "
                    f"{f.metadata.get('help', '').replace('|', '&#124;')} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """``text`` (a page) with each marked table regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + options_table(m.group(2)) + m.group(4), text)


def tables_in(text: str) -> List[str]:
    """The model names whose tables a page holds."""
    return [m.group(2) for m in BLOCK.finditer(text)]


def stale_pages(folder: str = DOCS, write: bool = False) -> List[str]:
    """Pages under ``folder`` whose tables differ from the options classes (rewritten if
    ``write``), and pages of a method with options that hold no table of it."""
    stale = []
    pages = {page_of(m) for m in LEARNERS if options_class(m) is not None}
    for here, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".md"):
                with open(os.path.join(here, name), encoding="utf-8") as f:
                    if "<!-- options: " in f.read():
                        pages.add(os.path.relpath(os.path.join(here, name), folder).replace(os.sep, "/"))
    for page in sorted(pages):
        path = os.path.join(folder, page)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        missing = [m for m in LEARNERS if page_of(m) == page and options_class(m) is not None
                   and m not in tables_in(text)]
        new = render(text)
        if new != text or missing:
            stale.append(page + (f" (no table of {', '.join(missing)}: add <!-- options: {missing[0]} --> "
                                 f"<!-- end options -->)" if missing else ""))
        if write and new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
    return stale


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only list the stale pages (exit 1 if any)")
    parser.add_argument("--docs", default=DOCS, help="the docs folder (default: docs/)")
    args = parser.parse_args(argv)
    stale = stale_pages(args.docs, write=not args.check)
    for page in stale:
        print(("stale: " if args.check else "updated: ") + page)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
