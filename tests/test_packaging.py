"""The installed distribution: one `segshards` namespace, the bundled MNIST as package data, and a wheel
that builds and reads a set from outside the checkout."""

import ast
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERIC = ("writer", "loaders", "train", "data")


def python_files() -> list[Path]:
    return [p for top in ("writer", "loaders", "train", "tests", "bench") for p in (ROOT / top).rglob("*.py")]


def test_no_code_imports_a_bare_top_level_folder() -> None:
    """Everything imports through `segshards.`: a bare `import writer` would load a second copy of it."""
    bare = re.compile(rf"^\s*(from|import) ({'|'.join(GENERIC)})(\.|\s|$)", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in python_files() if bare.search(p.read_text())]
    assert offenders == []


def code_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in `path` that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_readers_know_no_recipe_by_name() -> None:
    """Loaders and training go by the manifest's schema: no recipe name appears in their code."""
    name = re.compile(r"mnist-|coco-semantic|mask-folder")
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for top in ("loaders", "train")
        for path in (ROOT / top).rglob("*.py")
        for line, text in code_strings(path)
        if name.search(text)
    ]
    assert found == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("segshards-*.whl")
    return path


def test_wheel_installs_only_the_segshards_namespace_with_mnist(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"segshards"}
    assert "segshards/__main__.py" in names and "segshards/writer/recipe.py" in names
    assert (
        "segshards/data/mnist/train-images-idx3-ubyte.gz" in names and "segshards/data/mnist/MD5SUMS" in names
    )
    packaged = {n for n in names if n.endswith("__init__.py")}
    folders = {p.parent for top in ("writer", "loaders", "train") for p in (ROOT / top).rglob("__init__.py")}
    expected = {
        f"segshards/{p.relative_to(ROOT)}/__init__.py"
        for p in folders
        if p.relative_to(ROOT).parts[:2] != ("writer", "toplevel")
    }
    assert expected <= packaged  # every subpackage of the tree is in the wheel


def fresh_venv(folder: Path) -> Path:
    """A new virtual environment that sees this one's dependencies but not its segshards."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_wheel_builds_and_loads_a_set_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"SEGSHARDS_CACHE": "off"}
    script = """
import importlib.util, sys, segshards.writer
from segshards.loaders import make_loader
assert "site-packages" in segshards.writer.__file__, segshards.writer.__file__
assert all(importlib.util.find_spec(m) is None for m in ("writer", "loaders", "train"))
batch = next(iter(make_loader("set", "train", 8, shuffle=False)))
print(tuple(batch["image"].shape), tuple(batch["digits"].shape), str(batch["digits"].dtype))
"""
    build = [str(python), "-m", "segshards", "build", "mnist-grid", "--out", "set", "--jobs", "1"]
    build += ["--train", "40", "--val", "8", "--test", "8", "--shard-size", "16"]
    subprocess.run(build, cwd=work, env=env, check=True, capture_output=True, timeout=300)
    read = subprocess.run(
        [str(python), "-c", script],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert read.stdout.strip() == "(8, 1, 56, 56) (8, 4) torch.int64"
