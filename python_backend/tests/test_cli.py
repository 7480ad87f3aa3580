"""The ``dakr`` command line: help on every verb, one clear line and a non-zero exit on errors."""

import pytest

from dakr.cli import build_parser, main

from synthetic import TINY_OVERRIDES, write_config

VERBS = ["init", "site add", "site list", "adapt", "evaluate", "models", "rollback", "predict", "demo", "report", "benchmark", "serve"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb.split(), "--help"])
    assert exit_info.value.code == 0
    assert "usage: dakr" in capsys.readouterr().out


def test_errors_are_one_line_with_a_fix(tmp_path, capsys):
    assert main(["site", "list", str(tmp_path / "missing")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("dakr: error:") and "dakr init" in error and "\n" not in error


def test_bad_site_is_rejected_with_every_problem(tmp_path, capsys, synthetic_sites):
    store = tmp_path / "store"
    assert main(["init", str(store)]) == 0
    bad = tmp_path / "bad"
    (bad / "imagesTr").mkdir(parents=True)
    (bad / "labelsTr").mkdir()
    for path in (synthetic_sites["siteA"] / "imagesTr").iterdir():
        (bad / "imagesTr" / path.name).write_bytes(path.read_bytes())
    assert main(["site", "add", str(store), "bad", str(bad)]) == 1
    error = capsys.readouterr().err
    assert "nothing was stored" in error and error.count("Fix:") >= 4, "one problem per missing label map"
    assert main(["site", "list", str(store)]) == 0
    assert "no sites yet" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_workflow(tmp_path, capsys, synthetic_sites):
    store = str(tmp_path / "store")
    config = write_config(tmp_path / "tiny.json", TINY_OVERRIDES)
    assert main(["init", store]) == 0
    for name in ("siteA", "siteB"):
        assert main(["site", "add", store, name, str(synthetic_sites[name])]) == 0
    capsys.readouterr()
    assert main(["adapt", store, "--site", "siteA", "--strategy", "finetune", "--config", str(config)]) == 0
    first = capsys.readouterr()
    assert first.err.startswith("[config] training from: base model (no parent)")
    assert "settings that differ from the defaults: " in first.err and "train.steps_per_epoch=4" in first.err
    assert "version 1 (finetune on siteA, base model (no parent)) is now active" in first.out
    assert main(["adapt", store, "--site", "siteB", "--config", str(config), "--set", "train.steps_per_epoch=2"]) == 0
    out = capsys.readouterr().out
    assert "version 2 (dakr on siteB, parent 1) is now active" in out
    assert "siteA" in out and "siteB" in out and "v1" in out and "v2" in out
    assert main(["models", store]) == 0
    assert "* 2" in capsys.readouterr().out.replace("*2", "* 2")
    assert main(["rollback", store, "1"]) == 0
    assert main(["evaluate", store, "--version", "1"]) == 0
    table = capsys.readouterr().out
    assert "siteB" in table and "v1" in table and "v2" not in table
    image = next((synthetic_sites["siteB"] / "imagesTr").iterdir())
    assert main(["predict", store, str(image), str(tmp_path / "pred.nii.gz")]) == 0
    assert (tmp_path / "pred.nii.gz").exists()
    assert main(["adapt", store, "--site", "siteB", "--set", "net.filters=[8,16,32]"]) == 1
    assert "cannot change after the base model" in capsys.readouterr().err
    assert main(["report", store, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "index.html").exists()
