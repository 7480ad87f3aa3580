"""The shift answers the module's tests script (``fake_http``) are the backend's own: the site check
rebuilt with the backend's code and validated by its response model, and the prediction headers as
``/predict`` and a stored case's ``/uncertainty`` write them. Needs the backend's dependencies (not part
of the Slicer stand-in)."""

from __future__ import annotations

import inspect

from dakr.service import routes_audit, routes_models
from dakr.service.schemas import RankedImageOut, SiteCheckOut
from dakr.service.shift_responses import SHIFT_HEADERS_DOC
from dakr.service.shift_responses import shift_headers as backend_shift_headers
from dakr.shift.check import CaseShift, SiteCheck
from dakr.shift.ood import ShiftedPrediction
from dakr.shift.ranking import RankedImage

from DAKRSegmentationLib import shift
from fake_http import SITE_CHECK, shift_headers


def test_the_scripted_site_check_is_what_the_backend_computes_and_serves() -> None:
    fields = {key: value for key, value in SITE_CHECK.items() if key not in ("verdict", "cases")}
    check = SiteCheck(**fields, cases=[CaseShift(**case) for case in SITE_CHECK["cases"]])
    assert check.to_dict() == SITE_CHECK
    assert SiteCheckOut(**check.to_dict()).model_dump() == SITE_CHECK


def test_the_scripted_prediction_headers_are_the_routes_headers() -> None:
    for route in (routes_models.predict, routes_audit.case_uncertainty):
        assert "shift_file_response(" in inspect.getsource(route), route.__name__
    assert set(SHIFT_HEADERS_DOC) == {shift.SCORE_HEADER, shift.THRESHOLD_HEADER, shift.OOD_HEADER, shift.NEAREST_HEADER}
    for score, threshold in ((2.5, 1.2), (0.7, 1.2), (1.23456, 1.2)):
        backend = ShiftedPrediction(None, None, score, threshold, "A")
        assert shift_headers(score, threshold) == backend_shift_headers(backend)
        flag = shift.ShiftFlag.from_headers(backend_shift_headers(backend))
        assert flag.out_of_distribution == backend.out_of_distribution
        assert (flag.score, flag.threshold, flag.nearest_site) == (round(score, 4), threshold, "A")


def test_a_ranked_image_has_the_fields_the_module_shows() -> None:
    item = RankedImage(1, "x.nii.gz", 0.4, 0.9, 0.65, "most novel").to_dict()
    assert RankedImageOut(**item).model_dump() == item
