"""Site-shift check: before adapting, how different is a registered site and how well does the
active model already do on it?

The site's cases are labelled, so the active model's Dice on all of them (training and audit
cases) is measured directly. Beside it, the feature-space shift: each case's shift score
against the known sites (see :mod:`dakr.shift.reference`) and the kernel MMD between the new
site's embeddings and each known site's training embeddings, whose smallest value names the
nearest known site.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
import torch

from dakr.data.io import read_image
from dakr.data.preprocessing import preprocess_image, restore_geometry
from dakr.display import format_dice_points
from dakr.evaluation.metrics import dice_per_class
from dakr.progress import ProgressCallback, ProgressEvent, null_progress
from dakr.shift.distances import mmd_squared
from dakr.shift.features import analyse_array
from dakr.shift.reference import load_reference
from dakr.store import Store, StoreError

#: A site whose Dice is this many points below the known sites' is worth adapting to.
ADAPT_GAP_POINTS = 5.0


@dataclass
class CaseShift:
    """One case of the checked site: its shift score, nearest known site and Dice (fractions 0-1)."""

    case_id: str
    split: str
    shift_score: float
    nearest_site: str
    dice: float
    dice_per_structure: dict[str, float]


@dataclass
class SiteCheck:
    """Result of :func:`check_site`; Dice values are fractions 0-1 as everywhere in the store and API."""

    site: str
    version: int
    known_sites: list[str]
    threshold: float
    median_shift: float
    mmd: dict[str, float]
    nearest_site: str
    unlike_known: bool
    dice: float
    dice_per_structure: dict[str, float]
    known_sites_dice: float | None
    adapt_recommended: bool
    cases: list[CaseShift]

    @property
    def verdict(self) -> str:
        """One plain-words sentence: which site it resembles, current Dice, and the advice."""
        if self.unlike_known:
            looks = f"unlike every known site (median shift {self.median_shift:.2f} > threshold {self.threshold:.2f})"
        else:
            looks = f"looks like site {self.nearest_site} (median shift {self.median_shift:.2f}, threshold {self.threshold:.2f})"
        known = "" if self.known_sites_dice is None else f" vs {format_dice_points(self.known_sites_dice)} on known sites"
        advice = "adapt" if self.adapt_recommended else "adaptation optional"
        return f"{looks}; current model Dice {format_dice_points(self.dice)}{known} — {advice}"

    def to_dict(self) -> dict:
        """JSON-ready form, with the verdict sentence."""
        return {**asdict(self), "verdict": self.verdict}


def check_site(
    store: Store, site: str, *, device: torch.device | None = None, progress: ProgressCallback = null_progress
) -> SiteCheck:
    """Measure the active model on every case of ``site`` and its shift from the known sites."""
    from dakr.inference import default_device
    from dakr.pipeline import load_version_model

    active = store.active_version()
    if active is None:
        raise StoreError(f"store {store.path.name} has no model yet, so there is nothing to compare {site!r} with. Fix: run `dakr adapt` first")
    if store.site(site).purged:
        raise StoreError(f"site {site!r} was purged; its images are gone")
    device = device or default_device()
    reference = load_reference(store, active.id, device=device, progress=progress)
    model, config, values = load_version_model(store, active.id, device)
    names = {value: name for name, value in store.label_names.items()}
    foreground = [v for v in values if v != 0]
    cases = [c for c in store.cases(site) if c.image_path]
    results, embeddings = [], []
    for index, case in enumerate(cases, start=1):
        image = read_image(case.image_path)
        array, grid = preprocess_image(image, config.preprocess)
        analysis = analyse_array(model, array, config, device)
        predicted = restore_geometry(np.asarray(values, dtype=np.uint8)[analysis.prediction], grid, image)
        dice = dice_per_class(sitk.GetArrayFromImage(predicted), sitk.GetArrayFromImage(read_image(case.label_path)), foreground)
        score, nearest = reference.score(analysis.embedding)
        per_structure = {names[v]: dice[v] for v in foreground}
        results.append(CaseShift(case.case_id, case.split, score, nearest, float(np.mean(list(per_structure.values()))), per_structure))
        embeddings.append(analysis.embedding)
        progress(ProgressEvent(stage="shift", step=index, total=len(cases), message=f"checking {site}/{case.case_id}"))
    if not results:
        raise StoreError(f"site {site!r} has no stored cases to check")
    new = np.stack(embeddings)
    mmd = {
        known: mmd_squared(new, reference.embeddings[known], reference.scale)
        for known in reference.sites
        if known != site and len(reference.embeddings[known]) >= 2 and len(new) >= 2
    }
    median_shift = float(np.median([r.shift_score for r in results]))
    nearest = min(mmd, key=mmd.__getitem__) if mmd else min(reference.distances(new.mean(axis=0)).items(), key=lambda kv: kv[1])[0]
    known_dice = [store.site_dice(active.id, s) for s in reference.sites if s != site]
    known_dice = [d for d in known_dice if d is not None]
    known_sites_dice = float(np.mean(known_dice)) if known_dice else None
    dice = float(np.mean([r.dice for r in results]))
    structures = {name: float(np.mean([r.dice_per_structure[name] for r in results])) for name in results[0].dice_per_structure}
    adapt = known_sites_dice is not None and 100.0 * (known_sites_dice - dice) > ADAPT_GAP_POINTS
    unlike = median_shift > reference.threshold
    return SiteCheck(
        site, active.id, reference.sites, reference.threshold, median_shift, mmd, nearest, unlike,
        dice, structures, known_sites_dice, adapt or (unlike and known_sites_dice is None), results,
    )


def format_check(check: SiteCheck) -> str:
    """The check as a short table per known site and per structure, ending with the verdict line."""
    lines = [f"shift check of site {check.site} against version {check.version} (known sites: {', '.join(check.known_sites)})"]
    if check.mmd:
        lines.append(f"  {'known site':<32}{'MMD²':>10}")
        lines += [f"  {site:<32}{value:>10.3f}" for site, value in sorted(check.mmd.items(), key=lambda kv: kv[1])]
    lines.append(f"  {'structure':<32}{'Dice (points)':>14}")
    lines += [f"  {name:<32}{format_dice_points(value):>10}" for name, value in check.dice_per_structure.items()]
    flagged = [c.case_id for c in check.cases if c.shift_score > check.threshold]
    if flagged:
        lines.append(f"  cases beyond the threshold: {', '.join(flagged)}")
    lines.append(check.verdict)
    return "\n".join(lines)
