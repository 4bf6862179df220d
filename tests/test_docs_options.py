"""Every option has a one-line help in its field's metadata, and the options tables of
docs/methods/ are generated from those fields and up to date (toolbox/docs_options.py)."""
import dataclasses
import os
import shutil

import pytest

from toolbox.docs_options import DOCS, fields_without_help, main, page_of, stale_pages, tables_in
from toolbox.registry import LEARNERS, options_class

WITH_OPTIONS = [m for m in LEARNERS if options_class(m) is not None]


@pytest.mark.parametrize("model", WITH_OPTIONS)
def test_every_option_has_a_one_line_help(model):
    assert fields_without_help(options_class(model)) == []


def test_a_field_without_help_is_found():
    @dataclasses.dataclass
    class Opts:
        a: int = dataclasses.field(default=1, metadata={"help": "fine"})
        b: int = 2
        c: str = dataclasses.field(default="x", metadata={"help": "two\nlines"})
        d: float = dataclasses.field(default=0.0, metadata={"help": " "})

    assert fields_without_help(Opts) == ["b", "c", "d"]


@pytest.mark.parametrize("model", WITH_OPTIONS)
def test_the_methods_page_names_every_option_in_its_table(model):
    with open(os.path.join(DOCS, page_of(model)), encoding="utf-8") as f:
        text = f.read()
    assert model in tables_in(text), f"docs/{page_of(model)} has no options table of {model}"
    table = text.split(f"<!-- options: {model} -->", 1)[1].split("<!-- end options -->", 1)[0]
    for field in dataclasses.fields(options_class(model)):
        assert f"| `{field.name}` |" in table, f"{page_of(model)}: {model}'s table misses {field.name}"


def test_the_tables_are_up_to_date():
    assert stale_pages() == [], "run: python -m toolbox.docs_options"


def test_a_stale_or_missing_table_is_named_and_regenerated(tmp_path, capsys):
    folder = tmp_path / "docs"
    shutil.copytree(DOCS, folder, ignore=shutil.ignore_patterns("*.png"))
    page = folder / "methods" / "rapf.md"
    page.write_text(page.read_text().replace("| `mix_bias` |", "| `mix_bias_old` |"))
    coda = folder / "methods" / "prompts.md"
    coda.write_text(coda.read_text().replace("<!-- options: coda_prompt -->", "<!-- no table -->"))
    assert main(["--check", "--docs", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "stale: methods/rapf.md" in out and "stale: methods/prompts.md (no table of coda_prompt" in out
    assert main(["--docs", str(folder)]) == 0  # rewrites rapf.md; prompts.md needs its marker back by hand
    assert "| `mix_bias` |" in page.read_text() and "mix_bias_old" not in page.read_text()
    assert stale_pages(str(folder)) == [
        "methods/prompts.md (no table of coda_prompt: add <!-- options: coda_prompt --> <!-- end options -->)"]
