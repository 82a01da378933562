"""The documentation works as written: every Python block of README.md and docs/*.md runs against small sets
laid out as `make shards` lays them out, every `segshards` command line shown uses options its parser has,
and every module path, file path, link and the manifest example match the code."""

import contextlib
import functools
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.__main__ import SECTIONS
from segshards.writer.cli.main import main
from segshards.writer.recipes.registry import recipe_names
from tests.conftest import S3_KEYS
from tests.mnist_fixtures import SMALL, build_once

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: (.*?) -->")
MAX_NOT_RUN = 3  # blocks shown but not run (each mark says why); more means the docs drift from the code
README_MAX_LINES = 300
MNIST_SETS = ("mnist-foreground", "mnist-circle", "mnist-grid")
S3_SET = ("team-bucket", "mnist-grid")  # the bucket and prefix the remote examples read
BLOCK_TIMEOUT_S = 180
COCO_TINY = next(
    (p / "shared/data/coco-tiny" for p in ROOT.parents if (p / "shared/data/coco-tiny").is_dir()), None
)
ENTRY_POINT_GROUPS = {"segshards.recipes", "segshards.commands"}  # dotted names that are not modules
NARRATION = re.compile(r"this session|the brief|previous (run|session)|the lead\b", re.I)


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown file, with the reason of a `not run` mark right before it."""

    path: Path
    line: int
    lang: str
    text: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of `path`, in order."""
    text = path.read_text()
    found = []
    for m in FENCE.finditer(text):
        previous = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        mark = NOT_RUN.fullmatch(previous)
        line = text.count("\n", 0, m.start()) + 1
        found.append(Block(path, line, m.group(1), m.group(2), mark.group(1) if mark else None))
    return found


ALL_BLOCKS = [b for path in DOCS for b in blocks(path)]
PYTHON = [b for b in ALL_BLOCKS if b.lang == "python"]
SHELL = [b for b in ALL_BLOCKS if b.lang in ("sh", "bash", "")]


# ---- Python blocks ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `shards/` folder as `make shards` leaves it, with small sets (links to the session's builds)."""
    folder = tmp_path_factory.mktemp("doc-sets") / "shards"
    folder.mkdir()
    for recipe in MNIST_SETS:
        (folder / recipe).symlink_to(build_once(tmp_path_factory, recipe, *SMALL))
    return folder


@functools.cache
def upload_once(endpoint: str, folder: Path) -> None:
    """The set in `folder` under s3://team-bucket/mnist-grid on the loopback server (once per session)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_KEYS["AWS_DEFAULT_REGION"],
    )
    bucket, prefix = S3_SET
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")


def block_env(block: Block, request: pytest.FixtureRequest, shards: Path) -> dict[str, str]:
    """The environment a block runs in: the session's source cache, and a loopback S3 for `s3://` blocks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    if "s3://" in block.text:
        endpoint = request.getfixturevalue("s3_server")
        upload_once(endpoint, shards / S3_SET[1])
        env.update(S3_KEYS, AWS_ENDPOINT_URL=endpoint, AWS_CONFIG_FILE=os.devnull)
        env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    return env


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a Python block as a script in `cwd`; a failure shows where the block is and what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", block.text],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{block.where} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done


def is_front_page_loop(block: Block) -> bool:
    return block.path.name == "README.md" and "DevicePrefetcher" in block.text


@pytest.mark.parametrize(
    "block", [b for b in PYTHON if b.not_run is None and not is_front_page_loop(b)], ids=lambda b: b.where
)
def test_python_block_runs(
    block: Block, shards: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    (tmp_path / "shards").symlink_to(shards)
    if "coco-tiny/" in block.text:  # the photographs the README's `segshards.build` example cuts tiles from
        if COCO_TINY is None:
            pytest.skip("coco-tiny (shared/data/coco-tiny) is not beside this checkout")
        (tmp_path / "coco-tiny").symlink_to(COCO_TINY)
    run_block(block, tmp_path, block_env(block, request, shards))


def test_the_front_page_loop_runs_and_resumes_from_its_checkpoint(
    shards: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The README's loop runs; run again in the same folder, it takes its resume branch and finishes."""
    (loop,) = [b for b in PYTHON if is_front_page_loop(b)]
    (tmp_path / "shards").symlink_to(shards)
    env = block_env(loop, request, shards)
    first = run_block(loop, tmp_path, env)
    assert saved_position(tmp_path / "checkpoint.pt") == (1, 1)  # saved after epoch 1's first step
    second = run_block(loop, tmp_path, env)
    assert first.stdout == second.stdout == "done; the loader is at epoch 2\n"
    # Resumed, the run's first step is epoch 1's second batch (a fresh start would save (1, 1) again).
    assert saved_position(tmp_path / "checkpoint.pt") == (1, 2)


def saved_position(checkpoint: Path) -> tuple[int, int]:
    """(epoch, batches) of the loader position a checkpoint holds."""
    state = torch.load(checkpoint)["loader"]
    return state["epoch"], state["batches"]


def test_blocks_not_run_are_few_and_say_why() -> None:
    marks = [(path, m.group(1)) for path in DOCS for m in NOT_RUN.finditer(path.read_text())]
    marked = [b for b in ALL_BLOCKS if b.not_run is not None]
    assert len(marks) == len(marked), "a `not run` mark must sit on the line right before a fenced block"
    assert len(marked) <= MAX_NOT_RUN, [b.where for b in marked]
    for block in marked:
        assert block.lang == "python", f"{block.where}: only Python blocks are run, so only they take a mark"
        assert len(str(block.not_run).split()) >= 3, f"{block.where}: say why the block is not run"


def test_python_blocks_are_found() -> None:
    """The block finder sees the examples this test exists for (an empty list would pass vacuously)."""
    assert {b.path.name for b in PYTHON} >= {"README.md", "FORMAT.md", "RECIPES.md", "LOADING.md"}
    assert any("DevicePrefetcher" in b.text for b in PYTHON if b.path.name == "README.md")


# ---- command lines ---------------------------------------------------------------------------------


def commands(text: str) -> Iterator[list[str]]:
    """Each command of a shell block as tokens: continuation lines joined, comments dropped, `&&` split."""
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        command: list[str] = []
        for token in [*tokens, "&&"]:
            if token in ("&&", ";", "||", "|"):
                if command:
                    yield command
                command = []
            else:
                command.append(token)


def segshards_args(tokens: list[str]) -> list[str] | None:
    """The arguments of a `segshards` command (bare, `.venv/bin/segshards`, `python -m segshards`)."""
    if Path(tokens[0]).name == "segshards":
        return tokens[1:]
    if Path(tokens[0]).name.startswith("python") and tokens[1:3] == ["-m", "segshards"]:
        return tokens[3:]
    return None


@functools.cache
def help_text(*argv: str) -> str:
    """What `segshards ARGV --help` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0, f"segshards {' '.join(argv)} --help exited {exit_info.value.code}"
    return out.getvalue()


def options_of(help_output: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_output))


def shown_options(args: list[str]) -> list[str]:
    """The options a documented command line uses, usage brackets and `a|b` alternatives undone."""
    found = []
    for token in args:
        for part in token.strip("[]").split("|"):
            part = part.strip("[]")
            if part.startswith("-"):
                found.append(part.split("=", 1)[0])
    return found


def command_problems(args: list[str], where: str) -> list[str]:
    """What is wrong with one documented `segshards ARGS` line, checked against the parsers' help."""
    top = help_text()
    if not args or args[0].startswith("-"):
        return [
            f"{where}: segshards {o}: no such option" for o in shown_options(args) if o not in options_of(top)
        ]
    command = args[0]
    if not re.search(rf"^\s+{re.escape(command)}\s", top, re.M):
        return [f"{where}: segshards {command}: no such command"]
    scope = [command]
    if command == "build" and len(args) > 1 and not args[1].startswith("-"):
        recipe = args[1].strip("[]")
        if recipe in recipe_names():
            scope.append(recipe)
        elif recipe.upper() != recipe:  # a placeholder such as RECIPE is fine, a wrong name is not
            return [f"{where}: segshards build {recipe}: no such recipe"]
    known = options_of(help_text(*scope))
    return [
        f"{where}: segshards {' '.join(scope)}: no option {o}"
        for o in shown_options(args[1:])
        if o not in known
    ]


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


def test_segshards_command_lines_use_real_commands_and_options() -> None:
    problems, checked = [], 0
    for block in SHELL:
        for tokens in commands(block.text):
            args = segshards_args(tokens)
            if args is not None:
                checked += 1
                problems += command_problems(args, block.where)
            elif tokens[0] == "make":
                problems += [
                    f"{block.where}: make {t}: no such target" for t in tokens[1:] if t not in make_targets()
                ]
            elif Path(tokens[0]).name.startswith("python") and tokens[1:3] == ["-m", "bench"]:
                problems += [f"{block.where}: bench section {s}?" for s in tokens[3:] if s not in SECTIONS]
    assert checked >= 20, f"only {checked} segshards command lines found"
    assert problems == []


def test_the_command_line_check_catches_a_wrong_option_and_recipe() -> None:
    assert command_problems(["build", "mnist-grid", "--out", "x", "--shards", "3"], "doc") == [
        "doc: segshards build mnist-grid: no option --shards"
    ]
    assert command_problems(["build", "mnist-gird", "--out", "x"], "doc") == [
        "doc: segshards build mnist-gird: no such recipe"
    ]
    assert command_problems(["verify", "[--progress|--no-progress]"], "doc") != []
    assert command_problems(["train", "[--size", "H", "W]", "--resume"], "doc") == []


# ---- names, paths, links, the manifest example ----------------------------------------------------


def resolves(dotted: str) -> bool:
    """Whether `a.b.c` is an importable module, or an attribute reached from one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_module_paths_exist() -> None:
    missing = []
    for path in DOCS:
        names = set(re.findall(r"\bsegshards(?:\.[A-Za-z_]\w*)+", path.read_text()))
        missing += [f"{path.name}: {n}" for n in sorted(names - ENTRY_POINT_GROUPS) if not resolves(n)]
    assert missing == []


def test_repository_paths_exist() -> None:
    pattern = re.compile(r"`((?:writer|loaders|train|bench|tests|docs|data)/[\w./-]*)`")
    missing = []
    for path in DOCS:
        missing += [
            f"{path.name}: {p}" for p in set(pattern.findall(path.read_text())) if not (ROOT / p).exists()
        ]
    assert missing == []


def test_every_module_is_placed_in_the_architecture() -> None:
    """docs/ARCHITECTURE.md's table names every module of the writer's layers, the loaders and train, and
    no module that is not there."""
    table = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    folders = [
        ROOT / "writer",
        *sorted(p for p in (ROOT / "writer").iterdir() if (p / "__init__.py").is_file()),
    ]
    folders += [ROOT / "loaders", ROOT / "train"]
    unplaced = []
    for folder in folders:
        head = f"| `{folder.relative_to(ROOT)}/` |"
        rows = [line for line in table.splitlines() if line.startswith(head) and line.count(" | ") >= 2]
        named = set(re.findall(r"`(\w+)`", rows[0].split(" | ")[1])) if rows else set()
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"} - {"__main__"}
        unplaced += [f"{folder.relative_to(ROOT)}/{m}.py" for m in sorted(modules - named)]
        unplaced += [f"{folder.relative_to(ROOT)}/{m}.py is gone" for m in sorted(named - modules)]
    assert unplaced == []


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve() -> None:
    broken = []
    for path in DOCS:
        for target, fragment in re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", path.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            linked = (path.parent / target).resolve()
            if not linked.exists():
                broken.append(f"{path.name}: {target}")
            elif fragment:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                if fragment not in {anchor(h) for h in headings}:
                    broken.append(f"{path.name}: {target}#{fragment}")
    assert broken == []


def documented_keys(shown: Any, real: Any, where: str) -> Iterator[str]:
    """Keys of the documented JSON that the real manifest lacks (`...` stands for values left out)."""
    if isinstance(shown, dict) and isinstance(real, dict):
        for key, value in shown.items():
            if key == "...":
                continue
            if key not in real:
                yield f"{where}.{key}"
            else:
                yield from documented_keys(value, real[key], f"{where}.{key}")
    elif isinstance(shown, list) and isinstance(real, list) and shown and real:
        yield from documented_keys(shown[0], real[0], f"{where}[0]")


def test_the_manifest_example_has_the_shape_of_a_real_manifest(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    (example,) = [b for b in ALL_BLOCKS if b.lang == "json" and b.path.name == "FORMAT.md"]
    shown = json.loads(example.text)
    real = json.loads((build_once(tmp_path_factory, "mnist-grid", *SMALL) / "manifest.json").read_text())
    assert sorted(shown) == sorted(real)
    assert list(documented_keys(shown, real, "manifest")) == []


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    narrated = [f"{p.name}: {m.group(0)}" for p in DOCS for m in NARRATION.finditer(p.read_text())]
    assert narrated == []
