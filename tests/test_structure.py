"""The shape of the code: no import circles, ``utils/`` holds only what a fork copies plus
method pieces, the plugin's files are closed under imports, nothing in the learner contract
is dead. Imports are read from the source (``ast``), lazy ones inside functions included."""
import ast
import os
import re

from tests.conftest import ROOT

PACKAGES = ("models", "utils", "toolbox", "exps", "benchmarks")
# Pieces of methods other than the plugin's (RAPF, PROOF): in utils/, not copied into forks.
METHOD_PIECES = {"utils/feature_cache.py", "utils/parameter_fusion.py", "utils/gaussian.py", "utils/herding.py",
                 "utils/adapter.py", "utils/prototypes.py", "utils/moe.py", "utils/prompt_pool.py",
                 "utils/augment.py"}


def module_path(name):
    """The repository file of module ``name`` (a package's __init__.py), or None if not ours."""
    parts = name.split(".")
    if parts[0] not in PACKAGES and name != "main":
        return None
    for candidate in (os.path.join(*parts) + ".py", os.path.join(*parts, "__init__.py")):
        if os.path.isfile(os.path.join(ROOT, candidate)):
            return candidate.replace(os.sep, "/")
    return None


def imports_of(path):
    """Repository files ``path`` imports anywhere in it (top level or inside functions)."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = module_path(name)
            if target and target != path:
                found.add(target)
    return found


def code_files():
    files = ["main.py"]
    for package in ("models", "utils", "toolbox"):
        files += [f"{package}/{n}" for n in sorted(os.listdir(os.path.join(ROOT, package))) if n.endswith(".py")]
    return files


def cycles(graph):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_hand_made_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = {f: imports_of(f) for f in code_files()}
    assert cycles(graph) == []


# The layers (docs/development.md, "Imports go one way"). main.py and benchmarks/ may import anything.
DATA_LAYER = {f"toolbox/{n}.py" for n in ("data", "benchmark_data", "data_manager", "io", "checkpoint", "run_lock",
                                           "released", "published", "interrupts")}
ABOVE_DATA = {f"toolbox/{n}.py" for n in ("registry", "configs", "trainer", "report", "table", "analysis",
                                           "retention", "restore")}


def layer_violation(src, target):
    """Why ``src`` may not import ``target`` (repository paths), or None if it may."""
    if src.startswith("models/") and not target.startswith(("models/", "utils/")):
        return "models/ imports only models/ and utils/"
    if src.startswith("utils/") and target.startswith(("toolbox/", "models/")):
        return "utils/ never imports toolbox/ or models/"
    if src.startswith("toolbox/") and target.startswith("models/"):
        return "toolbox/ reaches learners only through toolbox/registry.py's table (importlib)"
    if src in DATA_LAYER and target in ABOVE_DATA:
        return "the data and file layer of toolbox/ imports nothing above it"
    if (src, target) == ("toolbox/trainer.py", "toolbox/report.py"):
        return "the trainer gets its end-of-run summary passed in; it does not import the report"
    return None


def test_the_layer_rules_refuse_each_kind_of_wrong_import():
    for src, target in [("models/proof.py", "toolbox/released.py"), ("utils/clip_ops.py", "toolbox/io.py"),
                        ("utils/lora.py", "models/base.py"), ("toolbox/retention.py", "models/base.py"),
                        ("toolbox/data.py", "toolbox/registry.py"), ("toolbox/data_manager.py", "toolbox/configs.py"),
                        ("toolbox/trainer.py", "toolbox/report.py")]:
        assert layer_violation(src, target), (src, target)
    for src, target in [("main.py", "models/mgclip.py"), ("models/proof.py", "utils/clip_ops.py"),
                        ("toolbox/registry.py", "utils/config.py"), ("toolbox/trainer.py", "toolbox/registry.py"),
                        ("toolbox/report.py", "toolbox/published.py"), ("toolbox/data_manager.py", "toolbox/data.py")]:
        assert layer_violation(src, target) is None, (src, target)


def test_imports_follow_the_layers():
    """Every import, lazy ones inside functions included, goes one way (docs/development.md)."""
    wrong = sorted(f"{f} imports {t}: {why}" for f in code_files() for t in imports_of(f)
                   for why in [layer_violation(f, t)] if why)
    assert wrong == []


# Project imports inside functions that stay there, each for a reason (file, module); any other is
# moved to the top of its module, so that the layer rules above and the import graph are read at a glance.
LAZY_ALLOWED = {
    # main.py: --help and usage errors answer without loading torch (imports after the arguments are read)
    ("main.py", "toolbox.interrupts"), ("main.py", "toolbox.exit_codes"), ("main.py", "toolbox.checkpoint"),
    ("main.py", "toolbox.configs"), ("main.py", "toolbox.report"), ("main.py", "toolbox.trainer"),
    ("main.py", "utils.config"),
}


def lazy_project_imports(path):
    """``(path, module)`` of each project import inside a function of ``path``."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    found = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if module_path(f"{node.module}.{a.name}") else node.module
                         for a in node.names]
            else:
                continue
            found |= {(path, name) for name in names if module_path(name)}
    return found


def test_no_lazy_project_imports_but_the_allowed_ones():
    files = code_files() + [f"benchmarks/{n}" for n in sorted(os.listdir(os.path.join(ROOT, "benchmarks")))
                            if n.endswith(".py")]
    found = set().union(*(lazy_project_imports(f) for f in files))
    assert sorted(found - LAZY_ALLOWED) == [], "move these to the top of their module (or allow one, saying why)"
    assert sorted(LAZY_ALLOWED - found) == [], "stale entries in LAZY_ALLOWED"


def plugin_files():
    """The files docs/forks.md tells a fork to copy (its step 1)."""
    text = open(os.path.join(ROOT, "docs", "forks.md"), encoding="utf-8").read()
    m = re.search(r"Copy `models/mgclip\.py` and `utils/\{([a-z_,]+)\}\.py`", text)
    assert m, "docs/forks.md no longer names the files to copy"
    return {"models/mgclip.py"} | {f"utils/{name}.py" for name in m.group(1).split(",")}


def test_the_plugin_files_are_closed_under_imports():
    """Every module a plugin file imports, even lazily, is a plugin file too (or the fork's
    own ``models/base.py``): a fork gets no other file of this repository."""
    files = plugin_files()
    missing = {f"{f} imports {target}" for f in files for target in imports_of(f)
               if target not in files and target != "models/base.py"}
    assert not missing


def test_utils_holds_only_plugin_files_and_method_pieces():
    here = {f"utils/{n}" for n in os.listdir(os.path.join(ROOT, "utils")) if n.endswith(".py")} - {"utils/__init__.py"}
    assert here == (plugin_files() - {"models/mgclip.py"}) | METHOD_PIECES
    for f in here:  # utils never reach up into the toolbox or the learners
        assert not {t for t in imports_of(f) if t.startswith(("toolbox/", "models/"))}, f


def test_nothing_in_the_learner_contract_is_dead():
    """Every function and method ``models/base.py`` defines is PyCIL's surface (forks call
    it) or used somewhere in the toolbox, the learners or the plugin files."""
    pycil_surface = {"__init__", "incremental_train", "eval_task", "after_task", "exemplar_size", "_get_memory"}
    tree = ast.parse(open(os.path.join(ROOT, "models", "base.py"), encoding="utf-8").read())
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    source = "".join(open(os.path.join(ROOT, f), encoding="utf-8").read()
                     for f in code_files() if f != "models/base.py")
    unused = sorted(name for name in defined - pycil_surface if not re.search(rf"\b{name}\b", source))
    assert unused == []


METHOD_DOCS = {"mgclip": r"SPEC (\d+)(?:-(\d+))?", "rapf": r"\bR(\d+)(?:-R(\d+))?\b",
               "proof": r"\bP(\d+)(?:-P(\d+))?\b", "simplecil": r"\bS(\d+)(?:-S(\d+))?\b",
               "aper_adapter": r"\bA(\d+)(?:-A(\d+))?\b", "moe_adapters": r"\bM(\d+)(?:-M(\d+))?\b",
               "magmax": r"\bM(\d+)(?:-M(\d+))?\b", "slca": r"\bS(\d+)(?:-S(\d+))?\b",
               "prompts": r"\b([LDC])(\d+)(?:-[LDC](\d+))?\b",  # one file, three methods: a letter each
               "clap4clip": r"\bC(\d+)(?:-C(\d+))?\b",
               "zs_clip": None}  # None: no item table (one behaviour, pinned by the tests the doc names)


def test_every_method_doc_has_its_item_pattern():
    """A new docs/methods/<name>.md needs its entry in METHOD_DOCS (the item ids its models/<name>.py
    cites), or None if it has no item table, else the items check below would skip it silently."""
    docs = {f[:-3] for f in os.listdir(os.path.join(ROOT, "docs", "methods")) if f.endswith(".md")}
    assert sorted(docs - set(METHOD_DOCS)) == [], "docs/methods/ without a METHOD_DOCS entry in tests/test_structure.py"
    assert sorted(set(METHOD_DOCS) - docs) == []
    for method, pattern in METHOD_DOCS.items():
        assert (pattern is None) == (doc_items(method) == (set(), [])), method  # None exactly when no item table


def doc_items(method):
    """Item ids of a method doc's table (first column) and the tests each row names."""
    text = open(os.path.join(ROOT, "docs", "methods", f"{method}.md"), encoding="utf-8").read()
    header_file = re.search(r"pinned by \(`(tests/test_\w+\.py)`\)", text)
    items, tests = set(), []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) < 3 or not re.fullmatch(r"[A-Z]?\d+", cells[0]):
            continue
        items.add((re.sub(r"\d", "", cells[0]) if method == "prompts" else "", int(re.sub(r"\D", "", cells[0]))))
        current = header_file.group(1) if header_file else None
        for path, name in re.findall(r"`(?:(tests/test_\w+\.py)::)?(test_\w+)`", cells[-1]):
            current = path or current
            tests.append((current, name))
    return items, tests


def test_every_item_a_method_file_cites_is_in_its_doc_and_every_test_named_there_exists():
    for method, pattern in METHOD_DOCS.items():
        if pattern is None:
            continue
        items, tests = doc_items(method)
        for letter in {a for a, _ in items}:  # 1..n, none missing (per letter where a file has several)
            numbers = {n for a, n in items if a == letter}
            assert numbers == set(range(1, max(numbers) + 1)), (method, letter)
        source = open(os.path.join(ROOT, "models", f"{method}.py"), encoding="utf-8").read()
        cited = set()
        for found in re.findall(pattern, source):
            letter, a, b = found if len(found) == 3 else ("", *found)
            cited |= {(letter, n) for n in range(int(a), int(b or a) + 1)}
        assert cited and cited <= items, (method, sorted(cited - items))
        assert tests, method
        for path, name in tests:
            assert path is not None, (method, name)
            body = open(os.path.join(ROOT, path), encoding="utf-8").read()
            assert re.search(rf"^def {name}\(", body, re.M), f"docs/methods/{method}.md names {path}::{name}"
