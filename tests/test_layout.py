"""The code keeps the shape docs/ARCHITECTURE.md describes: a writer whose folders are its layers, small
modules and short functions. The layers themselves are checked by import-linter (`make lint`)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("writer", "loaders", "train")
MAX_WRITER_MODULES = 8
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
# A function may run longer only when it says why: a hot loop whose split was measured to cost time.
LONG_FUNCTION_MARK = "# Long by measurement:"


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_writer_keeps_its_modules_in_layer_folders() -> None:
    modules = sorted(p.name for p in (ROOT / "writer").glob("*.py"))
    assert len(modules) <= MAX_WRITER_MODULES, modules
    layers = {p.name for p in (ROOT / "writer").iterdir() if (p / "__init__.py").is_file()}
    assert {"format", "storage", "sources", "recipes", "build", "share", "cli"} <= layers


def test_no_module_is_over_the_line_budget() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in sources()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_long_without_saying_why() -> None:
    long = []
    for path in sources():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
                body = lines[node.lineno - 1 : node.end_lineno]
                if len(body) > MAX_FUNCTION_LINES and not any(LONG_FUNCTION_MARK in line for line in body):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({len(body)} lines)")
    assert long == []


def test_every_package_folder_says_what_it_holds() -> None:
    missing = [
        str(init.relative_to(ROOT))
        for init in (ROOT / "writer").rglob("__init__.py")
        if not (ast.get_docstring(ast.parse(init.read_text())) or "").strip()
    ]
    assert missing == []
