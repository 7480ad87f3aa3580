"""CLI messages that send the user the right way: token files, rejected sites, interrupted training."""

from __future__ import annotations

from pathlib import Path

import pytest

import dakr.pipeline
from dakr.cli import main
from dakr.store import Store


def test_missing_token_file_names_the_file_and_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "token.txt"
    assert main(["serve", str(tmp_path), "--token-file", str(missing)]) == 1
    error = capsys.readouterr().err.strip()
    assert str(missing) in error and "Fix:" in error and "16 or more characters" in error
    assert "Errno" not in error and "\n" not in error


def test_rejected_site_header_is_printed_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    assert main(["init", str(store)]) == 0
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    (tmp_path / "empty" / "labelsTr").mkdir()
    assert main(["site", "add", str(store), "x", str(tmp_path / "empty")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("dakr: error: site rejected") and error.count("site rejected") == 1


@pytest.mark.parametrize(("work_dir", "hint"), [(True, "run the same command with --resume"), (False, "pass --work-dir DIR")])
def test_ctrl_c_during_adapt_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], work_dir: bool, hint: str
) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dakr.pipeline, "adapt", interrupted)
    monkeypatch.setattr("dakr.threads.use_torch_threads", lambda *args, **kwargs: 1)
    store = Store.init(tmp_path / "store")
    argv = ["adapt", str(store.path), "--site", "A"] + (["--work-dir", str(tmp_path / "wd")] if work_dir else [])
    assert main(argv) == 130
    error = capsys.readouterr().err.strip()
    assert error.startswith("dakr: interrupted; ") and hint in error
