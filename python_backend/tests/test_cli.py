"""The ``dakr`` command line: help on every verb, one clear line and a non-zero exit on errors."""

import json

import pytest

from dakr.cli import build_parser, main

from synthetic import TINY_OVERRIDES, write_config

VERBS = [
    "init", "site add", "site list", "adapt", "evaluate", "models", "rollback", "predict", "demo", "report", "benchmark",
    "serve", "policy", "approve", "reject", "record",
]


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
    assert first.out.strip().splitlines()[-1] == "ACCEPTED: version 1 passed every check; activated"
    assert main(["adapt", store, "--site", "siteB", "--config", str(config), "--set", "train.steps_per_epoch=2"]) == 0
    out = capsys.readouterr().out
    # One audit case per site: non-inferiority on siteA cannot be shown, so the gate holds version 2.
    assert "version 2 was stored but NOT activated: the gate held it" in out and "dakr approve STORE 2" in out
    assert "siteA" in out and "siteB" in out and "v1" in out and "v2" in out
    assert out.strip().splitlines()[-1].startswith("HELD: version 2 failed on siteA")
    assert "power warning: siteA: only 1 audit case" in out
    assert main(["rollback", store, "2"]) == 1
    assert "held and cannot be activated" in capsys.readouterr().err
    assert main(["approve", store, "2", "--reason", "checked the siteA audit case by eye", "--by", "QA"]) == 0
    assert main(["record", store, "2"]) == 0
    record = capsys.readouterr().out
    assert "approved by QA: checked the siteA audit case by eye" in record and "SHA-256" in record
    assert main(["record", store, "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signoffs"][0]["by"] == "QA"
    assert main(["models", store]) == 0
    models = capsys.readouterr().out
    assert "* 2" in models.replace("*2", "* 2") and "approved active" in models
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


def test_policy_verb_shows_and_sets_versions(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["init", store]) == 0
    assert main(["policy", store]) == 0
    assert "defaults (none stored yet)" in capsys.readouterr().out
    assert main(["policy", store, "--set", "margin=1.5", "--set", "auto_activate=false"]) == 0
    out = capsys.readouterr().out
    assert "stored policy version 1" in out and "margin = 1.5" in out and "auto_activate = false" in out
    assert main(["policy", store, "--set", "margin"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["approve", store, "3", "--reason", "x"]) == 1
    assert "unknown model version 3" in capsys.readouterr().err
