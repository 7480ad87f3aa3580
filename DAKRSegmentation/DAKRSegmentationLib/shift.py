"""What the backend says about site shift, in the module's words: a registered site's shift check
and the out-of-distribution flag of one prediction.

Standard library only: the client parses the flag with it, the widget shows its texts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

#: Response headers that carry the case's shift verdict (``POST /predict``, ``GET .../cases/{case_id}/uncertainty``).
SCORE_HEADER = "X-DAKR-Shift-Score"
THRESHOLD_HEADER = "X-DAKR-Shift-Threshold"
OOD_HEADER = "X-DAKR-Out-Of-Distribution"
NEAREST_HEADER = "X-DAKR-Nearest-Site"
#: Label colours of the flag: a warning red and a calm green.
OUT_OF_DISTRIBUTION_COLOR = "#c62828"
IN_DISTRIBUTION_COLOR = "#2e7d32"
#: What the site check says when the store has no model to check with (HTTP 409).
NO_MODEL_TEXT = "No model yet: the shift check compares a site with the sites a model has learned. Adapt to a first site, then check."


@dataclass(frozen=True)
class ShiftFlag:
    """The shift verdict of one predicted case: its score, the threshold calibrated on the known
    sites' audit cases, whether it lies beyond it, and the nearest known site."""

    score: float
    threshold: float
    out_of_distribution: bool
    nearest_site: str

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> "ShiftFlag":
        """Read the ``X-DAKR-*`` headers of a prediction; ``ValueError`` names a missing or malformed one."""
        values = {}
        for header in (SCORE_HEADER, THRESHOLD_HEADER, OOD_HEADER, NEAREST_HEADER):
            value = headers.get(header)
            if value is None:
                raise ValueError(f"the prediction came without the {header} header. Fix: update the backend to one "
                                 "that reports site shift")
            values[header] = value
        try:
            score, threshold = float(values[SCORE_HEADER]), float(values[THRESHOLD_HEADER])
        except ValueError:
            raise ValueError(f"the prediction's shift headers are not numbers ({values[SCORE_HEADER]!r}, "
                             f"{values[THRESHOLD_HEADER]!r}). Fix: check the backend version") from None
        return cls(score, threshold, values[OOD_HEADER].strip().lower() == "true", values[NEAREST_HEADER])

    @property
    def text(self) -> str:
        """One line for the label next to the segmentation."""
        if self.out_of_distribution:
            return (f"Out of distribution: shift {self.score:.2f} > threshold {self.threshold:.2f} — check this result "
                    f"(nearest known site: {self.nearest_site})")
        return f"In distribution (shift {self.score:.2f} ≤ {self.threshold:.2f}; nearest known site: {self.nearest_site})"

    @property
    def color(self) -> str:
        return OUT_OF_DISTRIBUTION_COLOR if self.out_of_distribution else IN_DISTRIBUTION_COLOR

    @property
    def style_sheet(self) -> str:
        """Qt style sheet of the flag label: coloured, bold when out of distribution."""
        weight = "bold" if self.out_of_distribution else "normal"
        return f"color: {self.color}; font-weight: {weight};"


def site_check_text(check: dict[str, Any]) -> str:
    """The backend's plain-words verdict of ``GET /sites/{site}/check``, headed by the site and version."""
    verdict = str(check["verdict"])
    return f"Site {check['site']} (v{check['version']}): {verdict[:1].upper()}{verdict[1:]}."


def site_check_style_sheet(check: dict[str, Any]) -> str:
    """Red when the site is unlike every known one or adapting is recommended, green otherwise."""
    warn = bool(check.get("unlike_known")) or bool(check.get("adapt_recommended"))
    return f"color: {OUT_OF_DISTRIBUTION_COLOR if warn else IN_DISTRIBUTION_COLOR};"
