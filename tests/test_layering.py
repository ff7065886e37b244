"""The architecture, enforced: which room may import what (README "Layout and import map").

Every import of every module under onnx_compress/ is read from its AST (lazy imports in
functions included) and checked against the rooms below:
- onnxruntime is imported only in onnx_compress/runtime/;
- onnx_graphsurgeon only in the IR (onnx_compress/ir);
- protobuf is built or edited (onnx.helper.make_*, numpy_helper.from_array, CopyFrom,
  ClearField, ...) only in the IR and the runtime;
- a room imports only rooms below it, and the schemes never import the runtime (they reach
  calibration data through schemes.base.Activations).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnx_compress"

#: Rooms from the bottom up; a module may import its own room and the rooms below it.
ROOMS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "progress", "files", "blas", "options", "__version__")),
    ("ir", ("ir", "validate")),
    ("data", ("data",)),
    ("runtime", ("runtime",)),
    ("model", ("layers", "dims", "cost", "stats", "evaluators")),
    ("schemes", ("schemes",)),
    ("search", ("search",)),
    ("api", ("api", "report")),
    ("faces", ("aimet", "aimet_tensorflow", "nni", "cli", "__init__", "__main__")),
]
LEVEL = {top: level for level, (_, tops) in enumerate(ROOMS) for top in tops}
ROOM = {top: room for room, tops in ROOMS for top in tops}

#: Calls that build or edit protobuf messages: the IR's (and the runtime's) business.
PROTO_EDITS = {"make_node", "make_graph", "make_model", "make_tensor", "make_tensor_value_info", "make_opsetid",
               "make_attribute", "from_array", "CopyFrom", "ClearField", "MergeFrom", "ParseFromString"}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def top_of(path: Path) -> str:
    """The room key of a module: its first component under onnx_compress/."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of everything `path` imports."""
    tree = ast.parse(path.read_text(), str(path))
    package = ["onnx_compress", *path.relative_to(PACKAGE).parent.parts]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if node.module is None or node.level and not node.module:
                out += [(node.lineno, f"{stem}.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, stem))
    return out


def internal_top(name: str) -> str | None:
    """The room key of an imported onnx_compress name (a package constant such as
    __version__ is its own key, in the base room)."""
    parts = name.split(".")
    if parts[0] != "onnx_compress":
        return None
    if len(parts) == 1 or not ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return parts[1] if len(parts) > 1 else "__init__"
    return parts[1]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_rooms(path):
    me = top_of(path)
    assert me in LEVEL, f"{path.relative_to(PACKAGE)}: not in any room of tests/test_layering.py ROOMS"
    problems = []
    for line, name in imports(path):
        root = name.split(".")[0]
        if root == "onnxruntime" and me != "runtime":
            problems.append(f"line {line}: imports {name} (only onnx_compress/runtime/ may)")
        if root == "onnx_graphsurgeon" and me != "ir":
            problems.append(f"line {line}: imports {name} (only the IR may)")
        top = internal_top(name)
        if top is None or top == me or me in ("__init__",):
            continue
        if top not in LEVEL:
            problems.append(f"line {line}: imports {name}, which is in no room")
        elif LEVEL[top] > LEVEL[me]:
            problems.append(f"line {line}: {ROOM[me]} imports {name} from the higher room {ROOM[top]}")
        elif me == "schemes" and top == "runtime":
            problems.append(f"line {line}: schemes import {name} (they reach calibration via Activations)")
    assert not problems, f"{path.relative_to(PACKAGE)}: " + "; ".join(problems)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_protobuf_is_built_and_edited_only_in_ir_and_runtime(path):
    if top_of(path) in ("ir", "runtime"):
        return
    tree = ast.parse(path.read_text(), str(path))
    found = [f"line {n.lineno}: {n.func.attr}" for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in PROTO_EDITS]
    assert not found, f"{path.relative_to(PACKAGE)} builds/edits protobuf outside ir and runtime: {found}"


def test_the_checker_sees_violations(tmp_path):
    """The rules bite: an upward import, a runtime import from a scheme, onnxruntime outside
    the runtime, and a protobuf edit are each found in a planted module."""
    scheme = PACKAGE / "schemes" / "_planted_for_test.py"
    low = PACKAGE / "_planted_cost.py"
    try:
        scheme.write_text("from ..runtime import sessions\nimport onnxruntime\nfrom .. import api\n")
        low.write_text("import onnx\nonnx.helper.make_node('Relu', ['x'], ['y'])\n")
        LEVEL["_planted_cost"], ROOM["_planted_cost"] = LEVEL["cost"], "model"
        names = [n for _, n in imports(scheme)]
        assert "onnx_compress.runtime" in names and "onnxruntime" in names and "onnx_compress.api" in names
        with pytest.raises(AssertionError) as found:
            test_imports_follow_the_rooms(scheme)
        assert "only onnx_compress/runtime/ may" in str(found.value)
        assert "from the higher room api" in str(found.value)
        assert "reach calibration via Activations" in str(found.value)
        with pytest.raises(AssertionError, match="make_node"):
            test_protobuf_is_built_and_edited_only_in_ir_and_runtime(low)
        scheme.write_text("from ..runtime import sessions\n")
        with pytest.raises(AssertionError, match="reach calibration via Activations"):
            test_imports_follow_the_rooms(scheme)
    finally:
        scheme.unlink(missing_ok=True)
        low.unlink(missing_ok=True)
        LEVEL.pop("_planted_cost", None)


def test_readme_layout_names_every_module():
    """The README's layout section lists every module file of the package."""
    readme = (PACKAGE.parent / "README.md").read_text()
    start = readme.index("## Layout")
    end = readme.find("\n## ", start + 5)
    section = readme[start:end if end > 0 else len(readme)]
    missing = []
    for path in modules():
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) > 1:
            continue
        if rel.name not in section:
            missing.append(str(rel))
    assert not missing, f"README layout section does not name: {missing}"


#: Sizes: no module over about 400 lines, no function body over about 60 lines (its
#: docstring not counted), no public function with more than about 12 parameters (the
#: rest grouped in option objects). compress_auto keeps 14 (model, scheme, target,
#: eval_callback, eval_iterations: AIMET's; cost_metric, multiplicity, input_shape,
#: use_cuda, data, the three option groups, visualization).
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PUBLIC_PARAMETERS = 430, 60, 14


def _function_lines(node) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)}: {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        where = f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"
        assert _function_lines(node) <= MAX_FUNCTION_LINES, f"{where}: {_function_lines(node)} lines"
        args = node.args
        count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) - (args.args[:1] != []
                                                                                 and args.args[0].arg in ("self", "cls"))
        if not node.name.startswith("_"):
            assert count <= MAX_PUBLIC_PARAMETERS, f"{where}: {count} parameters"
