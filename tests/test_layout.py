"""The house's rule, read from the code: imports run downward only. Commands on top (none imports another), the
shared modules below them, the ground (data, metrics, training's config and console) at the bottom; the genomics
wing stands on the ground alone; and no module imports itself through others. The root holds the files a researcher
edits and the commands; a training run imports none of the tools for after training."""
import ast
import glob
import os

from helpers import ROOT

COMMANDS = {"train", "predict", "prepare", "interpret", "compare", "bench", "sweep"}
CORE = {"train", "model", "data", "metrics"}  # the files a researcher edits to run an experiment
GROUND = {"data", "metrics", "training.config", "training.defaults", "training.console"}
FOLDERS = ("training", "analysis", "benchmarks", "genomics")


def project_modules():
    """{module name: path} of every module of the project, those of a folder as <folder>.<name>."""
    paths = glob.glob(os.path.join(ROOT, "*.py"))
    paths += [path for folder in FOLDERS for path in glob.glob(os.path.join(ROOT, folder, "*.py"))]
    names = {}
    for path in paths:
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        names[rel.removesuffix(".__init__")] = path
    return names


def imports(path, modules):
    """The project modules a file imports, anywhere in it (functions and __main__ blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # from training import cache
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def layer(name):
    return 2 if name in COMMANDS else 0 if name in GROUND else 1


def graph():
    modules = project_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def test_every_command_is_known_and_runs_through_the_shared_runner():
    for name, path in project_modules().items():
        runs = "cli.run(" in open(path).read() and name != "training.cli"
        assert runs == (name in COMMANDS), f"{name}.py: a command is in COMMANDS and runs through cli.run"


def test_imports_run_downward_and_no_command_imports_another():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
             if layer(b) > layer(a) or layer(a) == layer(b) == 2]
    assert not wrong, wrong


def test_the_root_holds_the_core_and_the_commands_and_the_rest_lives_in_folders():
    root = {name for name, path in project_modules().items() if os.path.dirname(path) == ROOT}
    assert root == CORE | COMMANDS, root ^ (CORE | COMMANDS)


def closure(name, edges):
    """The modules that name imports, directly or through others, and itself."""
    seen, todo = set(), [name]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(edges[module])
    return seen


def test_a_training_run_imports_no_tool_for_after_training():
    """train.py's closure holds the core, training/ and what the chromosome split reads (genomics.intervals): no
    analysis, benchmark, picture of a finished run or example generator."""
    edges = graph()
    needed = {name for name in closure("train", edges) if name != "train"}
    wrong = sorted(n for n in needed if n.startswith(("analysis", "benchmarks")) or n.startswith("genomics") and
                   n != "genomics.intervals")
    assert not wrong, wrong


def test_the_genomics_wing_stands_on_the_ground_alone():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() if a.startswith("genomics")
             for b in targets if not (b in GROUND or b.startswith("genomics"))]
    assert not wrong, wrong


def test_no_import_circle():
    edges, state, circles = graph(), {}, []

    def visit(name, path):
        state[name] = "open"
        for nxt in sorted(edges[name]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_the_checks_see_a_broken_layout(tmp_path, monkeypatch):
    """A circle, an upward import and a command importing a command are found (the checks can fail)."""
    for name, text in {"data": "import model\n", "model": "import data\n", "train": "import predict\n",
                       "predict": "", "cli": "", "config": "", "metrics": "", "console": ""}.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    edges = graph()
    assert edges["data"] == {"model"} and edges["model"] == {"data"} and edges["train"] == {"predict"}
    for check in (test_imports_run_downward_and_no_command_imports_another, test_no_import_circle):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} passed a broken layout")
