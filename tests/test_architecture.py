"""The package's shape, checked by walking its source: stages import only earlier stages (no
cycle, lazy imports included), notes are warnings (no prints to stderr outside the command
line), every run-file attribute name is spelled in run/format.py only, functions stay short, and
the tests use public names. Then the promise to a caller: cnnviz never changes their module."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch

from cnnviz.run import format as fmt

from .conftest import REPO, tiny_cnn

PACKAGE = REPO / "cnnviz"
TESTS = REPO / "tests"


def _sources(root: Path):
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def _stage(path: Path) -> str:
    """The top-level module or subpackage a file belongs to (``scanner``, ``labels``...)."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    inside = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", "")) == "TYPE_CHECKING":
            inside |= {id(n) for n in ast.walk(node)}
    return inside


def _imported_stages(path: Path, tree: ast.AST) -> set[str]:
    """The stages a file imports at run time (relative imports, lazy ones inside functions too)."""
    skip = _type_checking_nodes(tree)
    here = list(path.relative_to(PACKAGE).parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in skip:
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            target = base + (node.module.split(".") if node.module else [a.name for a in node.names][:1])
            if target:
                out.add(target[0])
    return out


def test_no_import_cycle_between_the_stages():
    graph: dict[str, set[str]] = {}
    for path, tree in _sources(PACKAGE):
        stage = _stage(path)
        graph.setdefault(stage, set()).update(s for s in _imported_stages(path, tree) if s != stage)
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif len(trail) < len(graph):
                visit(nxt, trail + [nxt])

    for stage in sorted(graph):
        visit(stage, [stage])
    assert not cycles, sorted(set(cycles))[:5]


def test_every_import_of_the_package_names_a_module_that_exists():
    """Lazy imports inside functions too: a module moved without its callers fails here, not in
    the one code path that runs it."""
    import importlib.util

    missing = []
    for path, tree in _sources(PACKAGE):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        package = list(rel.parts[:-1])
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cnnviz"):
                target, names = node.module, []
            else:
                continue
            for name in [target, *(f"{target}.{n}" for n in names)]:
                if importlib.util.find_spec(name) is None and not _attribute_of(target, name):
                    missing.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    assert missing == []


def _attribute_of(package: str, name: str) -> bool:
    """``from . import x`` may import a name of the package rather than a module."""
    import importlib

    return name != package and hasattr(importlib.import_module(package), name.rsplit(".", 1)[-1])


def test_library_code_never_prints_to_stderr():
    offenders = []
    for path, tree in _sources(PACKAGE):
        if _stage(path) == "cli":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print" and \
                    any(k.arg == "file" for k in node.keywords):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def _run_file_attribute_names() -> set[str]:
    return {v for k, v in vars(fmt).items() if k.startswith(("ATTR_", "LAYER_")) and isinstance(v, str)} | \
        {fmt.OPTIMIZED_RECIPE}


def _is_attrs_update(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "update"
            and "attrs" in ast.unparse(node.func.value) and bool(node.args)
            and isinstance(node.args[0], ast.Dict))


def test_run_file_attribute_names_are_spelled_in_format_py_only():
    names = _run_file_attribute_names()
    offenders = []
    for path, tree in _sources(PACKAGE):
        if path.name == "format.py":
            continue
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                base = ast.unparse(node.value)
                key = node.slice.value if "attrs" in base or base == "a" else None
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                base = ast.unparse(node.func.value)
                key = node.args[0].value if "attrs" in base or base == "a" else None
            elif _is_attrs_update(node):
                offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno} {k.value}"
                              for k in node.args[0].keys if isinstance(k, ast.Constant) and k.value in names]
            if isinstance(key, str) and key in names:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {key}")
    assert offenders == []


def test_no_function_of_the_package_is_over_60_lines():
    long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
            for path, tree in _sources(PACKAGE) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > 60]
    assert long == []


def test_the_tests_import_no_private_names():
    """Every test file, those in the subpackages (tests/scanner/, tests/run/...) included."""
    offenders, folders = [], set()
    for path, tree in _sources(TESTS):
        folders.add(path.parent.relative_to(TESTS).as_posix())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cnnviz"):
                offenders += [f"{path.relative_to(TESTS)}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_")]
    assert offenders == []
    assert {".", "scanner", "run", "report"} <= folders, sorted(folders)


# -- the caller's module ------------------------------------------------------------------------

def _snapshot(module: torch.nn.Module) -> dict:
    return {"training": [m.training for m in module.modules()],
            "grad": [p.requires_grad for p in module.parameters()],
            "device": {p.device for p in module.parameters()},
            "state": {k: v.clone() for k, v in module.state_dict().items()},
            "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                      for m in module.modules()],
            "inplace": [getattr(m, "inplace", None) for m in module.modules()]}


def _same(a: dict, b: dict) -> None:
    for key in ("training", "grad", "device", "hooks", "inplace"):
        assert a[key] == b[key], key
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k


@pytest.mark.slow
def test_the_callers_module_is_untouched(photo_dir, tmp_path):
    """from_module, LoadedModel.to, a scan (relevance included), render, cs231n, attributions and
    explain --why leave the module a user handed over as it was: mode, gradients, device,
    weights, hooks, in-place flags."""
    from cnnviz import Preprocessing, from_module, scan
    from cnnviz.analysis.attribution import neuron_attributions
    from cnnviz.analysis.relevance import explain_prediction
    from cnnviz.optim import cs231n_class_visualization, render
    from cnnviz.optim import objectives as obj

    mine = tiny_cnn(seed=4).train()
    before = _snapshot(mine)
    model = from_module(mine, Preprocessing(resize=72, crop=(64, 64)),
                        class_names=[f"c{i}" for i in range(10)])
    model.to("cpu")
    run = scan(photo_dir, model, tmp_path / "run.h5", layers="3,6", top_k=2, batch_size=4, workers=0,
               progress=False, rank_by="max,mean,relevance")
    render(model, obj.channel("3", 1), steps=2, progress=False)
    cs231n_class_visualization(model, 3, steps=2, progress=False)
    neuron_attributions(model, run, "3", 0)
    explain_prediction(photo_dir / "animals" / "chelsea.png", run, model=model, top=2)
    _same(before, _snapshot(mine))
    assert mine.training and model.module is not mine and not model.module.training
    _same(_snapshot(copy.deepcopy(mine)), _snapshot(mine))


def test_a_note_names_the_users_line_through_other_libraries(tmp_path):
    """``user_level`` skips every frame up to the outermost cnnviz one, a library between two
    cnnviz frames included (a signal handler's note raised while torch's code runs)."""
    import os
    import warnings

    import cnnviz.errors as errors

    inside = os.path.dirname(errors.__file__)
    space: dict = {}
    exec(compile("def call(f):\n    return f()\n", os.path.join(inside, "_outer_for_test.py"), "exec"), space)
    exec(compile("import warnings\nfrom cnnviz.errors import CnnvizWarning, user_level\n"
                 "def warn():\n    warnings.warn('x', CnnvizWarning, stacklevel=user_level())\n",
                 os.path.join(inside, "_inner_for_test.py"), "exec"), space)
    exec(compile("def between(f):\n    return f()\n", str(tmp_path / "otherlib.py"), "exec"), space)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        space["call"](lambda: space["between"](space["warn"]))  # cnnviz -> other library -> cnnviz
    assert [w.filename for w in caught] == [__file__]


def test_every_submodule_named_in_the_docs_resolves_from_import_cnnviz():
    """``cnnviz.analysis.attribution.neuron_attributions(...)`` as the README writes it works
    after ``import cnnviz`` alone (subpackages load their modules on first use)."""
    import re
    import subprocess
    import sys

    docs = [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    text = "\n".join(p.read_text(encoding="utf-8") for p in docs)
    # cnnviz.data holds files only (the class index, the demo manifest)
    names = sorted({m for m in re.findall(r"`(cnnviz(?:\.[a-z_]\w*)+)", text)} - {"cnnviz.data"})
    code = ("import cnnviz, functools, sys\nbad = []\nfor n in sys.argv[1:]:\n    try:\n"
            "        functools.reduce(getattr, n.split('.')[1:], cnnviz)\n    except AttributeError:\n"
            "        bad.append(n)\nprint(bad)")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

