"""`segshards build` on bad input: a non-zero exit, one stderr line naming the culprit, nothing partial left."""

import errno
import gzip
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segshards.writer.cli import main as cli_main
from segshards.writer.cli.main import main
from tests.mnist_fixtures import (
    LABELS_MAGIC,
    SHARD_FILE,
    STEMS,
    error_lines,
    folder_bytes,
    idx_bytes,
    read_shard,
    tiny_arrays,
    tiny_source,
    visible_files,
    write_mnist_folder,
)


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], *, naming: str) -> str:
    """Run `main(argv)`, expect failure with exactly one error line that contains `naming`."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("segshards: error: ") and naming in lines[0], lines[0]
    return lines[0]


def assert_nothing_left(out: Path) -> None:
    """No visible file (shard, manifest, log) and no temp file in `out`, if it exists at all."""
    assert visible_files(out) == []
    if out.exists():
        assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def build_args(source: Path, out: Path, *extra: str, recipe: str = "mnist-foreground") -> list[str]:
    return ["build", recipe, "--source", str(source), "--out", str(out), "--jobs", "1", *extra]


def test_a_good_build_prints_one_summary_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tiny_source(tmp_path / "src")
    assert main(build_args(source, tmp_path / "out")) == 0
    captured = capsys.readouterr()
    line = f"{tmp_path / 'out'}: train 44, val 4, test 12 samples; 0 duplicates rejected; 3 shards written\n"
    assert captured.out == line
    assert error_lines(captured.err) == []


def test_a_resumed_build_says_which_shards_it_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tiny_source(tmp_path / "src"), tmp_path / "out"
    assert main(build_args(source, out, "--shard-size", "20")) == 0
    (out / "train-000001.tar").unlink()  # the other shards stay: the same command resumes around them
    capsys.readouterr()
    assert main(build_args(source, out, "--shard-size", "20")) == 0
    assert capsys.readouterr().out.endswith(
        "; 0 duplicates rejected; 1 shard written, 4 reused from an earlier run (resumed)\n"
    )


# ---- bad sources ----------------------------------------------------------------------------------


def corrupted_source(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A tiny gzipped source with one file spoilt as `kind`; returns (folder, spoilt file)."""
    arrays = tiny_arrays()
    folder = write_mnist_folder(tmp_path / "src", arrays)
    if kind == "truncated-gz":
        path = folder / f"{STEMS['train_images']}.gz"
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "corrupt-gz":
        path = folder / f"{STEMS['test_images']}.gz"
        data = bytearray(path.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 8] = bytes(
            255 - b for b in data[len(data) // 2 : len(data) // 2 + 8]
        )
        path.write_bytes(bytes(data))
    elif kind == "wrong-magic":
        path = folder / f"{STEMS['test_images']}.gz"
        path.write_bytes(gzip.compress(idx_bytes(arrays["test_images"], LABELS_MAGIC), mtime=0))
    elif kind == "count-mismatch":
        path = folder / f"{STEMS['train_labels']}.gz"
        path.write_bytes(gzip.compress(idx_bytes(arrays["train_labels"][:40], LABELS_MAGIC), mtime=0))
    elif kind == "md5-mismatch":
        folder = write_mnist_folder(tmp_path / "src", arrays, md5sums=True)
        path = folder / f"{STEMS['test_labels']}.gz"
        path.write_bytes(gzip.compress(idx_bytes((arrays["test_labels"] + 1) % 10, LABELS_MAGIC), mtime=0))
    elif kind == "missing-file":
        path = folder / f"{STEMS['test_labels']}.gz"
        path.unlink()
    else:
        raise AssertionError(kind)
    return folder, path


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("truncated-gz", "truncated"),
        ("corrupt-gz", "corrupt"),
        ("wrong-magic", "magic"),
        ("count-mismatch", "40 labels for 48 images"),
        ("md5-mismatch", "MD5SUMS"),
        ("missing-file", "missing"),
    ],
)
@pytest.mark.parametrize("recipe", ["mnist-foreground", "mnist-grid"])
def test_bad_source_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, says: str, recipe: str
) -> None:
    folder, path = corrupted_source(tmp_path, kind)
    line = fails(capsys, build_args(folder, tmp_path / "out", recipe=recipe), naming=path.name)
    assert says in line
    assert_nothing_left(tmp_path / "out")


def test_missing_source_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, build_args(tmp_path / "nowhere", tmp_path / "out"), naming=str(tmp_path / "nowhere"))
    assert_nothing_left(tmp_path / "out")


# ---- counts the source cannot supply, bad options --------------------------------------------------------


def test_more_digits_than_mnist_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["build", "mnist-foreground", "--out", str(tmp_path / "out"), "--train", "999999", "--jobs", "1"]
    line = fails(capsys, argv, naming="--train 999999")
    assert "55,000" in line or "55000" in line
    assert_nothing_left(tmp_path / "out")


def test_more_unique_samples_than_a_source_with_duplicates_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One duplicate among the 44 train-pool digits: 43 unique ones.
    source = tiny_source(tmp_path / "src", duplicates=[("train", 0, "train", 1)])
    fails(capsys, build_args(source, tmp_path / "out", "--train", "44"), naming="--train 44")
    assert_nothing_left(tmp_path / "out")
    # Grid: every train digit a copy of digit 0 or 1, so only 16 distinct grids exist.
    source = tiny_source(tmp_path / "src2", duplicates=[("train", j % 2, "train", j) for j in range(2, 48)])
    argv = build_args(
        source, tmp_path / "out", "--train", "17", "--val", "0", "--test", "0", recipe="mnist-grid"
    )
    line = fails(capsys, argv, naming="--train 17")
    assert "16" in line
    assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize(
    ("extra", "naming"),
    [
        (["--train", "-5"], "--train -5"),
        (["--val", "-1"], "--val -1"),
        (["--test", "-2"], "--test -2"),
        (["--shard-size", "0"], "--shard-size 0"),
        (["--shard-size", "-3"], "--shard-size -3"),
        (["--jobs", "-1"], "--jobs -1"),
        (["--seed", "-1"], "--seed -1"),
    ],
)
def test_bad_option_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], naming: str
) -> None:
    source = tiny_source(tmp_path / "src")
    fails(capsys, build_args(source, tmp_path / "out", *extra), naming=naming)
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["build", "mnist-nope", "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert "mnist-nope" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- output folders that are not ours ---------------------------------------------------------------


def test_out_folder_holding_another_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tiny_source(tmp_path / "src")
    out = tmp_path / "out"
    assert main(build_args(source, out)) == 0
    capsys.readouterr()
    before = folder_bytes(out, skip=())
    line = fails(capsys, build_args(source, out, recipe="mnist-circle"), naming=f"--out {out}")
    assert "mnist-foreground" in line
    fails(capsys, build_args(source, out, "--seed", "7"), naming=f"--out {out}")
    assert folder_bytes(out, skip=()) == before  # the existing set is untouched
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_out_folder_with_foreign_files_or_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tiny_source(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    fails(capsys, build_args(source, out), naming=f"--out {out}")
    assert visible_files(out) == ["notes.txt"]
    fails(capsys, build_args(source, out / "notes.txt"), naming="notes.txt")
    assert (out / "notes.txt").read_text() == "mine"


# ---- a full disk ------------------------------------------------------------------------------------------


class FullDiskFile:
    """A file that takes half of what it is given, then fails as a full disk does."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def write(self, data: bytes) -> int:
        self.handle.write(bytes(memoryview(data)[: len(data) // 2]))
        self.handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> "FullDiskFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


class ShortWriteFile(FullDiskFile):
    """A file that takes half of what it is given and says so, then takes nothing (no exception)."""

    taken = False

    def write(self, data: bytes) -> int:
        if self.taken:
            return 0
        self.taken = True
        return self.handle.write(bytes(memoryview(data)[: len(data) // 2]))


def writes_shard(file: Any, mode: str, out: Path) -> bool:
    """Whether `open(file, mode)` opens a shard (or its temp file) in `out` for writing."""
    return (
        isinstance(file, str | Path)
        and Path(file).parent == out
        and ".tar" in Path(file).name
        and "w" in mode
    )


def fill_disk_at(monkeypatch: pytest.MonkeyPatch, out: Path, nth: int, kind: type = FullDiskFile) -> None:
    """Make the `nth` shard file opened for writing in `out` (and every later one) hit ENOSPC."""
    real_open = open
    opened = 0

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        handle = real_open(file, mode, *args, **kwargs)
        if writes_shard(file, mode, out):
            opened += 1
            if opened >= nth:
                return kind(handle)
        return handle

    monkeypatch.setattr("builtins.open", fake_open)


def test_full_disk_on_the_first_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tiny_source(tmp_path / "src")
    out = tmp_path / "out"
    fill_disk_at(monkeypatch, out, 1)
    line = fails(capsys, build_args(source, out, "--shard-size", "10"), naming=str(out / "train-000000.tar"))
    assert "no space left on device" in line
    assert_nothing_left(out)


@pytest.mark.parametrize("kind", [FullDiskFile, ShortWriteFile])
def test_full_disk_mid_build_then_resume(
    kind: type, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tiny_source(tmp_path / "src")
    out = tmp_path / "out"
    argv = build_args(source, out, "--shard-size", "10")
    with monkeypatch.context() as patch:
        fill_disk_at(patch, out, 3, kind)
        fails(capsys, argv, naming=str(out / "train-000002.tar"))
    assert visible_files(out) == ["train-000000.tar", "train-000001.tar"]  # complete shards only, no manifest
    assert all(len(read_shard(out / n)) == 10 for n in visible_files(out))
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert main(argv) == 0
    log = json.loads((out / "build-log.json").read_text())
    assert (log["shards_reused"], log["shards_written"]) == (2, 6)
    fresh = tmp_path / "fresh"
    assert main(build_args(source, fresh, "--shard-size", "10")) == 0
    assert folder_bytes(out) == folder_bytes(fresh)
    assert all(SHARD_FILE.fullmatch(n) for n in visible_files(out) if n.endswith(".tar"))


@pytest.mark.parametrize("content", ["garbage\n", "0123  \n", "zz" * 16 + "  t10k-labels-idx1-ubyte.gz\n"])
def test_malformed_md5sums(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str) -> None:
    source = tiny_source(tmp_path / "src", md5sums=True)
    (source / "MD5SUMS").write_text(content)
    fails(capsys, build_args(source, tmp_path / "out"), naming=str(source / "MD5SUMS"))
    assert_nothing_left(tmp_path / "out")


def test_out_folder_below_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tiny_source(tmp_path / "src")
    (tmp_path / "afile").write_text("x")
    fails(capsys, build_args(source, tmp_path / "afile" / "sub"), naming=str(tmp_path / "afile"))


@pytest.mark.parametrize(("name", "content"), [("manifest.json", "{not json"), ("manifest.json", "[1, 2]"),
                                               (".segshards-build.json", "")])  # fmt: skip
def test_out_folder_with_a_corrupt_manifest_or_marker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str
) -> None:
    source = tiny_source(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(content)
    fails(capsys, build_args(source, out), naming=str(out))
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_interrupt_mid_build_leaves_no_partial_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tiny_source(tmp_path / "src")
    out = tmp_path / "out"
    real_open = open
    opened = 0

    def interrupting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        if writes_shard(file, mode, out):
            opened += 1
            if opened == 2:
                real_open(file, mode, *args, **kwargs).close()  # the temp file exists when Ctrl-C lands
                raise KeyboardInterrupt
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr("builtins.open", interrupting_open)
        assert main(build_args(source, out, "--shard-size", "10")) == 130
    lines = error_lines(capsys.readouterr().err)
    assert lines == ["segshards: interrupted; run the same command again to resume"]
    assert visible_files(out) == ["train-000000.tar"]
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


# ---- a CLI that shows itself --------------------------------------------------------------------------


def test_top_level_help_lists_every_command_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    rows = {
        line.split()[0]: " ".join(line.split()[1:])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("    ") and line.split()[0].isalpha()
    }
    assert set(rows) >= {"build", "verify", "publish", "preview", "train", "eval"}  # plugins' included
    assert rows["train"].startswith("train a small CNN") and rows["eval"].startswith("scores")
    assert all(rows.values())


@pytest.mark.parametrize(
    ("typed", "hint"), [("trian", "did you mean 'train'?"), ("frobnicate", "(commands: ")]
)
def test_unknown_command_lists_the_commands(
    capsys: pytest.CaptureFixture[str], typed: str, hint: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([typed])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"unknown command {typed!r}" in err and hint in err
    assert "build, verify, info, publish, preview, " in err and "train" in err and "eval" in err


def test_build_help_lists_recipes_and_where_their_options_are(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = capsys.readouterr().out
    assert "`segshards build RECIPE --help` shows a recipe's own options" in out
    for recipe in ("mnist-foreground", "mnist-circle", "mnist-grid", "coco-semantic"):
        assert re.search(rf"^  {recipe} +\S", out, flags=re.M)
    assert "--progress, --no-progress" in out


def test_jobs_above_the_shards_are_capped_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    monkeypatch.setattr("segshards.writer.build.job.start_build_workers", started.append)
    monkeypatch.setattr("segshards.writer.cli.jobs.cores", lambda: 64)
    source = tiny_source(tmp_path / "src")
    argv = build_args(
        source, tmp_path / "out", "--train", "20", "--val", "4", "--test", "4", "--shard-size", "10"
    )
    argv[argv.index("--jobs") + 1] = "99"
    monkeypatch.setattr("segshards.writer.build.job.run_tasks", serial_tasks)
    assert main(argv) == 0
    lines = error_lines(capsys.readouterr().err)
    assert lines == ["segshards: note: --jobs 99: capped at 4 (the shards to write)"]
    assert started == [4]
    assert json.loads((tmp_path / "out" / "build-log.json").read_text())["jobs"] == 4


def serial_tasks(tasks: Any, **kwargs: Any) -> Iterator[Any]:
    """run_tasks without workers (the capped job count is what is checked, not the pool)."""
    from segshards.writer.build.shards import run_shard_task

    yield from map(kwargs.get("runner", run_shard_task), tasks)


@pytest.mark.parametrize(("flag", "bar"), [([], False), (["--progress"], True), (["--no-progress"], False)])
def test_progress_bar_only_on_a_terminal_or_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str], bar: bool
) -> None:
    source = tiny_source(tmp_path / "src")
    assert main(build_args(source, tmp_path / "out", *flag)) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    assert ("\r" in err or "%|" in err) == bar


def test_a_count_the_source_cannot_supply_is_refused_before_rendering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("segshards.writer.build.job.render_all", lambda *a, **k: pytest.fail("rendered"))
    source = tiny_source(tmp_path / "src")  # 44 train-pool digits
    out = tmp_path / "new" / "out"
    line = fails(capsys, build_args(source, out, "--train", "45"), naming="--train 45")
    assert "--train 45 (at most 44); counts that fit: --train 44" in line
    assert not (tmp_path / "new").exists()  # no empty folder left behind


def test_other_settings_error_names_each_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tiny_source(tmp_path / "src")
    out = tmp_path / "out"
    assert main(build_args(source, out, "--train", "20")) == 0
    capsys.readouterr()
    line = fails(capsys, build_args(source, out, "--train", "10", "--seed", "4"), naming=f"--out {out}")
    assert "(manifest.json: counts.train 20 there, 10 asked; seed 0 there, 4 asked)" in line


def test_failed_commands_leave_no_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, build_args(tmp_path / "nowhere", tmp_path / "a" / "b"), naming="nowhere")
    fails(capsys, ["publish", str(tmp_path / "nowhere"), str(tmp_path / "c")], naming="no manifest")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ctrl_c_while_the_idle_workers_stop_reports_the_set_as_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the manifest is written the set is complete: Ctrl-C while the workers stop said "run the same
    command again to resume" and exit 130, with no summary."""
    source = tiny_source(tmp_path / "src")

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "stop_workers", interrupted)
    assert main(build_args(source, tmp_path / "out")) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{tmp_path / 'out'}: train ") and "interrupted" not in captured.err
    assert (tmp_path / "out" / "manifest.json").is_file()
