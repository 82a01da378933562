"""`python -m bench`: its help, a section's own options behind `--help`, and a section it does not have."""

import pytest

from bench.__main__ import SECTIONS, main


def test_help_without_a_section_lists_the_sections(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m bench" in out and all(name in out for name in SECTIONS)


def test_help_after_a_section_shows_that_sections_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["photo_bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--images" in out and "--skip-peers" in out
    assert out.startswith("usage: python -m bench photo_bench")  # no "===== photo_bench =====" banner


def test_a_misspelt_section_is_a_one_line_error_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["photo_bench", "photo_bnech"])
    assert exit_info.value.code == 2
    err = capsys.readouterr()
    assert "error: no section 'photo_bnech'; choose from writer_bench, " in err.err
    assert "=====" not in err.out  # photo_bench did not start
