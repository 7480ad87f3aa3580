"""Site-shift check, out-of-distribution flag and labelling order on tiny synthetic sites."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dakr.cli import main
from dakr.data.io import read_image
from dakr.data.site import discover_site
from dakr.pipeline import adapt
from dakr.shift import check_site, load_reference, predict_with_shift, rank_images
from dakr.shift.distances import mmd_squared, within_site_scale
from dakr.shift.ranking import greedy_order
from dakr.store import Store

from synthetic import SITE_CONTRASTS, TINY_OVERRIDES, write_site

KNOWN = SITE_CONTRASTS["siteA"]
#: Inverted contrast and a bright background: a protocol no known site has.
UNSEEN = (3.0, 0.0, 1.5)


@pytest.fixture(scope="module")
def shift_store(tmp_path_factory) -> Store:
    """siteA trained; siteA2 a near-copy of siteA (other subjects); siteX an unseen protocol."""
    root = tmp_path_factory.mktemp("shift")
    store = Store.init(root / "store")
    for name, contrast, seed in (("siteA", KNOWN, 0), ("siteA2", KNOWN, 7), ("siteX", UNSEEN, 8)):
        store.add_site(name, discover_site(write_site(root / "data", name, contrast, cases=6, seed=seed)), audit_fraction=0.34)
    adapt(store, "siteA", strategy="finetune", overrides={**TINY_OVERRIDES, "train.steps_per_epoch": 8})
    return store


def test_mmd_is_small_within_a_distribution_and_large_across():
    rng = np.random.default_rng(0)
    a, b, far = rng.normal(size=(20, 5)), rng.normal(size=(20, 5)), rng.normal(loc=3.0, size=(20, 5))
    scale = within_site_scale([a, b])
    assert abs(mmd_squared(a, b, scale)) < 0.1
    assert mmd_squared(a, far, scale) > 0.5


def test_shift_score_orders_a_different_site_above_a_near_copy(shift_store):
    near, far = check_site(shift_store, "siteA2"), check_site(shift_store, "siteX")
    assert far.median_shift > near.median_shift
    assert far.mmd["siteA"] > near.mmd["siteA"]
    assert near.nearest_site == "siteA"
    assert far.unlike_known and not near.unlike_known
    assert "unlike every known site" in far.verdict
    assert "looks like site siteA" in near.verdict
    assert 0.0 <= far.dice <= 1.0 and set(far.dice_per_structure) == {"inner", "outer"}


def test_calibration_uses_audit_cases_only(shift_store):
    reference = load_reference(shift_store, shift_store.active_version().id)
    audit = {("siteA", c.case_id) for c in shift_store.cases("siteA", "audit")}
    assert reference.calibration_cases and set(map(tuple, reference.calibration_cases)) == audit
    assert reference.sites == ["siteA"]
    assert len(reference.embeddings["siteA"]) == len(shift_store.cases("siteA", "train"))


def test_ood_flag_fires_on_an_unseen_protocol_and_not_on_a_known_audit_case(shift_store):
    known_case = shift_store.cases("siteA", "audit")[0]
    known = predict_with_shift(shift_store, read_image(known_case.image_path))
    unseen = predict_with_shift(shift_store, read_image(shift_store.cases("siteX", "audit")[0].image_path))
    assert not known.out_of_distribution and known.summary.endswith(": ok")
    assert unseen.out_of_distribution and unseen.summary.endswith(": OUT OF DISTRIBUTION")
    assert unseen.labels.GetSize() == read_image(known_case.image_path).GetSize()
    entropy = unseen.uncertainty
    assert entropy.GetSize() == unseen.labels.GetSize()
    values = np.asarray(__import__("SimpleITK").GetArrayFromImage(entropy))
    assert values.min() >= 0.0 and values.max() <= 1.0 + 1e-6


def test_ranking_is_deterministic_for_a_seed_and_explains_itself(shift_store):
    paths = [c.image_path for c in shift_store.cases("siteX")]
    first = rank_images(shift_store, paths, seed=3)
    again = rank_images(shift_store, paths, seed=3)
    assert [r.path for r in first] == [r.path for r in again]
    assert sorted(r.path for r in first) == sorted(map(str, paths))
    assert [r.rank for r in first] == list(range(1, len(paths) + 1))
    assert all("uncertainty" in r.reason and "feature distance" in r.reason for r in first)


def test_greedy_order_prefers_uncovered_cases():
    labelled = np.zeros((3, 2))
    candidates = np.array([[0.1, 0.0], [5.0, 5.0], [4.9, 5.0], [-4.0, 0.0]])
    order = [i for i, _, _ in greedy_order(candidates, np.zeros(4), labelled, weight=0.0)]
    assert order[0] == 1  # farthest from every labelled case
    assert order[1] == 3  # its twin (index 2) is covered once index 1 is picked
    assert set(order[2:]) == {0, 2}


def test_cli_check_predict_and_rank(shift_store, tmp_path, capsys):
    from dakr.cli import main

    assert main(["site", "check", str(shift_store.path), "siteX"]) == 0
    assert "unlike every known site" in capsys.readouterr().out.strip().splitlines()[-1]
    image = shift_store.cases("siteX", "audit")[0].image_path
    out, uncertainty = tmp_path / "labels.nii.gz", tmp_path / "entropy.nii.gz"
    assert main(["predict", str(shift_store.path), str(image), str(out), "--uncertainty", str(uncertainty)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("shift score ") and last.endswith(": OUT OF DISTRIBUTION")
    assert out.is_file() and uncertainty.is_file()
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for case in shift_store.cases("siteX"):
        (folder / case.image_path.name.replace("image", case.case_id)).write_bytes(case.image_path.read_bytes())
    assert main(["site", "rank", str(shift_store.path), "--images", str(folder)]) == 0
    order = __import__("json").loads((folder / "labelling_order.json").read_text())
    assert [item["rank"] for item in order] == list(range(1, len(shift_store.cases("siteX")) + 1))


def test_api_check_and_predict_headers(shift_store):
    from dakr.service import create_app
    from test_service_support import local_client

    with local_client(create_app(shift_store.path)) as client:
        check = client.get("/api/v1/sites/siteX/check")
        assert check.status_code == 200, check.text
        assert check.json()["unlike_known"] is True and "adapt" in check.json()["verdict"]
        assert client.get("/api/v1/sites/nosuch/check").status_code == 404
        image = shift_store.cases("siteX", "audit")[0].image_path
        with image.open("rb") as handle:
            response = client.post("/api/v1/predict", files={"file": ("case.nii.gz", handle)})
        assert response.status_code == 200, response.text
        assert response.headers["X-DAKR-Out-Of-Distribution"] == "true"
        assert float(response.headers["X-DAKR-Shift-Score"]) > float(response.headers["X-DAKR-Shift-Threshold"])


@pytest.mark.slow
def test_learning_curve_writes_results_and_plot(tmp_path):
    """Through the CLI on the user's own site folders (``--data``/``--sites``, the last one new)."""
    for i, (name, contrast) in enumerate(SITE_CONTRASTS.items()):
        write_site(tmp_path / "data", name, contrast, cases=6, seed=i)
    config = {"demo": {}, "overrides": TINY_OVERRIDES, "strategy": "replay", "ks": [1, 2], "seeds": 2, "audit_fraction": 0.34}
    (tmp_path / "lc.json").write_text(json.dumps(config))
    assert main(["learning-curve", "--config", str(tmp_path / "lc.json"), "--out", str(tmp_path / "out"),
                 "--data", str(tmp_path / "data"), "--sites", *SITE_CONTRASTS]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["sites"] == list(SITE_CONTRASTS)
    assert (tmp_path / "out" / "results.json").is_file() and (tmp_path / "out" / "learning_curve.png").stat().st_size > 0
    assert [row["k"] for row in results["summary"]] == [1, 2]
    assert len(results["runs"]) == 2 * 2 * 2
    for run in results["runs"]:
        assert len(run["cases"]) == run["k"] and run["new_site_dice"]
    low, mean, high = results["summary"][0]["ranked_minus_random_dice"]
    assert low <= mean <= high
    assert results["orders"][0]["orders"]["ranked"] != [] and sorted(results["orders"][0]["orders"]["ranked"]) == sorted(results["orders"][0]["orders"]["random"])


def test_paired_difference_interval_covers_a_known_shift():
    from dakr.shift.learning_curve import paired_difference

    rng = np.random.default_rng(1)
    b = rng.normal(50, 5, size=(5, 12))
    low, mean, high = paired_difference(b + 3.0 + rng.normal(0, 0.5, size=b.shape), b)
    assert low < 3.0 < high and abs(mean - 3.0) < 0.5 and high - low < 1.0


def test_learning_curve_names_a_missing_data_folder(tmp_path, capsys):
    assert main(["learning-curve", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "missing"), "--sites", "a", "b"]) == 1
    assert "missing: is not a folder" in capsys.readouterr().err
