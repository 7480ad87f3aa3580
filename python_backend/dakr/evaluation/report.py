"""The HTML audit report of a store: Dice matrix, continual metrics, per-class tables, audit cases, lineage.

:func:`write_report` writes ``index.html`` and its PNG figures into one folder. The page uses
inline CSS and relative image links only, so it opens offline and can be zipped or attached as
is. All Dice values are shown in Dice points (Dice × 100); HD95 in mm.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from dakr.display import format_dice_points
from dakr.evaluation.accuracy import (
    AccuracyMatrix,
    accuracy_matrix,
    as_array,
    case_dice,
    class_hd95_matrix,
    foreground_names,
)
from dakr.evaluation.audit import GAINED, LOST, STILL_WRONG, CaseVolumes, load_case_volumes
from dakr.evaluation.plots import (
    CHANGE_COLORS,
    label_color,
    save_case_figure,
    save_heatmap,
    save_summary_figure,
)
from dakr.governance.decisions import gate_result, signoffs, statuses
from dakr.governance.display import change_text
from dakr.governance.policy import current_policy
from dakr.pipeline import audit_prediction, lineage
from dakr.store import SiteInfo, Store, VersionInfo

INDEX_FILE = "index.html"
SUMMARY_FIGURE = "summary.png"
DICE_FIGURE = "dice_matrix.png"
MISSING = "–"
UNDEFINED = "n/a"

#: (row name, key of AccuracyMatrix.summary(), definition, signed) of the continual metrics table.
_METRICS = (
    ("ACC", "acc", "mean over sites j of R[T, j]: Dice of the final model on every site of the lineage", False),
    ("BWT", "bwt", "mean over j < T of R[T, j] − R[j, j]; negative = forgetting", True),
    ("Forgetting", "forgetting", "mean over j < T of max over l < T of R[l, j] − R[T, j]; positive = forgetting", True),
    ("FWT", "fwt", "mean over j ≥ 3 of R[j−1, j] − b_j (b_j: see the reference below; the j = 2 term is zero by construction)", True),
)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 0;
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #e3e6ea; padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 18px 0 6px; font-size: 1.02em; } h4 { margin: 10px 0 2px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.9em; }
th, td { border: 1px solid #d5d9de; padding: 4px 9px; text-align: right; }
th { background: #eef1f4; } th[scope=row] { text-align: left; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; margin: 0 4px 0 10px;
          vertical-align: -0.1em; }
.grid { display: flex; flex-wrap: wrap; gap: 0 28px; }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; border: 1px solid #e3e6ea; }
figcaption { font-size: 0.9em; color: #444; margin-top: 4px; }
code { background: #f0f2f4; padding: 0 3px; }
"""


@dataclass(frozen=True)
class _Context:
    """What every section needs: the store, the output folder and the version × site Dice matrix."""

    store: Store
    out_dir: Path
    label_names: dict[str, int]
    versions: list[VersionInfo]
    sites: list[SiteInfo]
    #: ``(versions, sites)`` Dice fractions, NaN where not evaluated.
    dice: np.ndarray
    active: VersionInfo | None
    parent: VersionInfo | None

    @property
    def site_names(self) -> list[str]:
        return [site.name for site in self.sites]


def write_report(store: Store, out_dir: Path, *, cases_per_site: int = 2) -> Path:
    """Write the audit report of ``store`` into ``out_dir`` and return the path of its ``index.html``.

    Shows up to ``cases_per_site`` audit cases of every site that is not purged, comparing the
    active version with its parent; missing predictions are computed (and cached) on the way.
    """
    if cases_per_site < 0:
        raise ValueError(f"cases_per_site must be >= 0, got {cases_per_site}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = _context(store, out_dir)
    audit_html, summary_case = _audit_section(context, cases_per_site)
    sections = [
        _header(context),
        _notes(),
        _dice_section(context),
        _continual_section(context),
        _class_section(context),
        audit_html,
        _lineage_section(context),
        _change_control_section(context),
    ]
    save_summary_figure(
        out_dir / SUMMARY_FIGURE, context.dice, _version_labels(context), context.site_names, summary_case,
        context.label_names,
    )
    index = out_dir / INDEX_FILE
    index.write_text(_page("DAKR audit report", sections), encoding="utf-8")
    return index


def _context(store: Store, out_dir: Path) -> _Context:
    version_ids, site_names, values = store.dice_matrix()
    versions = {version.id: version for version in store.versions()}
    sites = {site.name: site for site in store.sites()}
    active = store.active_version()
    parent = store.version(active.parent) if active is not None and active.parent is not None else None
    return _Context(
        store=store,
        out_dir=out_dir,
        label_names=store.label_names or {},
        versions=[versions[version_id] for version_id in version_ids],
        sites=[sites[name] for name in site_names],
        dice=as_array(values, len(version_ids), len(site_names)),
        active=active,
        parent=parent,
    )


# ---------------------------------------------------------------------- formatting
def _text(value: Any) -> str:
    return html.escape(str(value))


def _signed_points(value: float) -> str:
    return UNDEFINED if math.isnan(value) else f"{100.0 * value:+.1f}"


def _metric_value(value: float, signed: bool) -> str:
    if signed:
        return _signed_points(value)
    return UNDEFINED if math.isnan(value) else format_dice_points(value)


def _millimetres(value: float) -> str:
    if math.isnan(value):
        return MISSING
    return "∞" if math.isinf(value) else f"{value:.1f}"


def _table(table_id: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table whose first column is a row header; every cell is escaped text."""
    head = "".join(f"<th>{_text(cell)}</th>" for cell in header)
    body = "".join(
        f'<tr><th scope="row">{_text(row[0])}</th>' + "".join(f"<td>{_text(cell)}</td>" for cell in row[1:]) + "</tr>"
        for row in rows
    )
    return f'<table id="{_text(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{_text(color)}"></span>'


def _figure(src: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="{_text(quote(src))}" alt="{_text(alt)}">'
        f"<figcaption>{_text(caption)}</figcaption></figure>"
    )


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{_text(title)}</h2>{body}</section>'


def _page(title: str, sections: Sequence[str]) -> str:
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_text(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n<h1>{_text(title)}</h1>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _version_labels(context: _Context) -> list[str]:
    return [f"v{version.id} ({version.site})" for version in context.versions]


# ---------------------------------------------------------------------- sections
def _header(context: _Context) -> str:
    labels = " ".join(
        f"{_swatch(label_color(value))}{_text(name)} ({value})"
        for name, value in sorted(context.label_names.items(), key=lambda item: item[1])
        if value != 0
    )
    sites = ", ".join(
        f"{site.name} ({site.n_audit} audit / {site.n_train} train{', purged' if site.purged else ''})"
        for site in context.sites
    )
    active = MISSING if context.active is None else f"v{context.active.id} (trained on {context.active.site})"
    items = [
        ("Store", f"<code>{_text(context.store.path)}</code>"),
        ("Generated", _text(datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))),
        ("Labels", labels or MISSING),
        ("Sites", _text(sites or "none registered")),
        ("Active version", _text(active)),
        ("Summary figure", f'<a href="{_text(quote(SUMMARY_FIGURE))}">{_text(SUMMARY_FIGURE)}</a> (Dice matrix and one audit case, for slides)'),
    ]
    return '<dl class="meta">' + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in items) + "</dl>"


def _notes() -> str:
    return (
        '<p class="note">Dice is the mean foreground Dice on each site\'s audit split, shown in Dice points '
        "(Dice × 100); HD95 is the 95th-percentile Hausdorff distance in mm (∞: a class missed or "
        "hallucinated). R[i, j] is the Dice on site j after stage i of the active version's lineage. "
        "ACC is the final model's mean Dice; BWT &lt; 0 means the model forgot earlier sites; Forgetting "
        "&gt; 0 is the drop from the best earlier Dice; FWT &gt; 0 means earlier stages helped on a site "
        f"before it was trained on. {MISSING} = not evaluated; {UNDEFINED} = undefined (too few stages).</p>"
    )


def _dice_section(context: _Context) -> str:
    if not context.versions:
        return _section("dice", "Dice by version and site", "<p>No model version yet.</p>")
    save_heatmap(
        context.out_dir / DICE_FIGURE, context.dice, _version_labels(context), context.site_names,
        "Dice by version and site",
    )
    rows = [
        [f"v{version.id}", version.site, *(format_dice_points(value) for value in row)]
        for version, row in zip(context.versions, context.dice)
    ]
    purged = [site.name for site in context.sites if site.purged]
    note = f"<p>Purged sites (images deleted, metrics kept): {_text(', '.join(purged))}.</p>" if purged else ""
    body = (
        _figure(DICE_FIGURE, "Dice heatmap", "Mean foreground Dice (points) of every version on every audit site.")
        + _table("dice-matrix", ["version", "trained on", *context.site_names], rows)
        + note
    )
    return _section("dice", "Dice by version and site", body)


def _continual_section(context: _Context) -> str:
    title = "Continual metrics of the active lineage"
    if context.active is None:
        return _section("continual", title, "<p>No model version yet.</p>")
    matrix = accuracy_matrix(context.store, context.active)
    stages = " → ".join(f"v{stage.id} ({stage.site})" for stage in matrix.stages)
    body = f"<p>Stages: {_text(stages)}.</p>" + _accuracy_table(matrix) + _metrics_table(matrix)
    body += _reference_note(matrix)
    return _section("continual", title, body)


def _accuracy_table(matrix: AccuracyMatrix) -> str:
    rows = [
        [str(i), f"v{stage.id}", *(format_dice_points(value) for value in matrix.r[i - 1])]
        for i, stage in enumerate(matrix.stages, start=1)
    ]
    table = _table("accuracy-matrix", ["stage", "version", *matrix.sites], rows)
    return "<h3>Accuracy matrix R (Dice points)</h3>" + table


def _metrics_table(matrix: AccuracyMatrix) -> str:
    summary = matrix.summary()
    rows = [[name, _metric_value(summary[key], signed), definition] for name, key, definition, signed in _METRICS]
    table = _table("continual-metrics", ["metric", "value (Dice points)", "definition"], rows)
    one_stage = (
        "<p>Only one stage: BWT, forgetting and FWT need at least two versions in the lineage.</p>"
        if len(matrix.stages) == 1
        else ""
    )
    return "<h3>Summary</h3>" + table + one_stage


def _reference_note(matrix: AccuracyMatrix) -> str:
    base = matrix.stages[0]
    values = ", ".join(f"{site} {format_dice_points(value)}" for site, value in zip(matrix.sites, matrix.reference))
    return (
        f"<p>FWT reference: b<sub>j</sub> = Dice of the stage-1 model v{base.id} on site j "
        f"(zero-shot reference), i.e. the first row of R: {_text(values)}.</p>"
    )


def _class_section(context: _Context) -> str:
    title = "Per-class Dice and HD95"
    if not context.versions:
        return _section("classes", title, "<p>No model version yet.</p>")
    label_values = context.label_names
    header = ["version", "trained on", *context.site_names]
    dice_tables = []
    for name, matrix in context.store.class_dice_matrix().items():
        cells = as_array(matrix, len(context.versions), len(context.sites))
        rows = [[f"v{v.id}", v.site, *map(format_dice_points, row)] for v, row in zip(context.versions, cells)]
        dice_tables.append(_class_table(name, f"class-dice-{label_values[name]}", header, rows))
    hd95 = class_hd95_matrix(context.store, [v.id for v in context.versions], context.site_names)
    hd95_tables = []
    for name in foreground_names(context.store):
        rows = [[f"v{v.id}", v.site, *map(_millimetres, row)] for v, row in zip(context.versions, hd95[name])]
        hd95_tables.append(_class_table(name, f"class-hd95-{label_values[name]}", header, rows))
    body = (
        "<h3>Dice per class (points)</h3>" + f'<div class="grid">{"".join(dice_tables)}</div>'
        + "<h3>HD95 per class (mm)</h3>" + f'<div class="grid">{"".join(hd95_tables)}</div>'
    )
    return _section("classes", title, body)


def _class_table(label: str, table_id: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return f"<div><h4>{_text(label)}</h4>{_table(table_id, header, rows)}</div>"


def _audit_section(context: _Context, cases_per_site: int) -> tuple[str, CaseVolumes | None]:
    """The audit-case figures of every site and the first case shown (for the summary figure)."""
    title = "Audit cases"
    active = context.active
    if active is None:
        return _section("audit", title, "<p>No model version yet.</p>"), None
    parts = [_audit_intro(active, context.parent)]
    first_case: CaseVolumes | None = None
    number = 0
    for site in context.sites:
        parts.append(f'<section id="audit-{_text(site.name)}"><h3>{_text(site.name)}</h3>')
        if site.purged:
            parts.append('<p class="note">Site purged: its images and predictions were deleted; metrics are kept.</p>')
        for record in context.store.cases(site.name, "audit")[:cases_per_site]:
            if record.image_path is None or record.label_path is None:
                continue
            number += 1
            previous = context.parent
            case = load_case_volumes(
                site.name,
                record.case_id,
                record.image_path,
                record.label_path,
                _prediction(context.store, active, site.name, record.case_id),
                None if previous is None else _prediction(context.store, previous, site.name, record.case_id),
            )
            parts.append(_case_figure(context, case, f"case{number:03d}_{case.site}_{case.case_id}.png"))
            if first_case is None:
                first_case = case
        parts.append("</section>")
    return _section("audit", title, "".join(parts)), first_case


def _audit_intro(active: VersionInfo, parent: VersionInfo | None) -> str:
    if parent is None:
        compare = _text(f"Predictions of v{active.id}, the only version of its lineage (no previous version).")
    else:
        changes = "".join(_swatch(color) + _text(name) for color, name in CHANGE_COLORS.values())
        compare = _text(
            f"Previous = v{parent.id} (parent of the active version), new = v{active.id} (active). "
            "Difference: voxels whose prediction changed, judged against the ground truth:"
        ) + changes + "."
    return (
        f"<p>{compare} Slices: axial and coronal planes through the ground truth's centre of mass; "
        "label colours as in the header, background transparent.</p>"
    )


def _prediction(store: Store, version: VersionInfo, site: str, case_id: str) -> tuple[int, Path]:
    """(version id, path of its cached prediction of the case), computing the prediction if needed."""
    return version.id, audit_prediction(store, version.id, site, case_id)


def _case_figure(context: _Context, case: CaseVolumes, name: str) -> str:
    """Write the case's figure as ``name`` in the output folder; its HTML with the Dice caption."""
    save_case_figure(context.out_dir / name, case, context.label_names)
    after = case_dice(context.store, case.after_version, case.site).get(case.case_id)
    if case.before_version is None:
        caption = f"{case.site}/{case.case_id}: Dice v{case.after_version} {format_dice_points(after)}"
    else:
        before = case_dice(context.store, case.before_version, case.site).get(case.case_id)
        delta = UNDEFINED if before is None or after is None else _signed_points(after - before)
        counts = {code: int(np.count_nonzero(case.changes == code)) for code in (GAINED, LOST, STILL_WRONG)}
        caption = (
            f"{case.site}/{case.case_id}: Dice v{case.before_version} (previous) {format_dice_points(before)} → "
            f"v{case.after_version} (new) {format_dice_points(after)} (Δ {delta}); changed voxels: "
            f"{counts[GAINED]} gained, {counts[LOST]} lost, {counts[STILL_WRONG]} changed but still wrong"
        )
    return _figure(name, f"audit case {case.site}/{case.case_id}", caption)


def _lineage_section(context: _Context) -> str:
    title = "Model versions"
    if not context.versions:
        return _section("lineage", title, "<p>No model version yet.</p>")
    in_lineage = {version.id for version in lineage(context.store, context.active)}
    header = ["version", "parent", "site", "strategy", "created", "epochs", "lr", "buffer budget",
              "λ_cna", "λ_cra", "kernel", "pairing", "status"]
    rows = [
        [
            f"v{version.id}",
            MISSING if version.parent is None else f"v{version.parent}",
            version.site,
            version.strategy,
            _created(version.created),
            *_key_config(version.config),
            "active" if version.active else ("active lineage" if version.id in in_lineage else ""),
        ]
        for version in context.versions
    ]
    return _section("lineage", title, _table("lineage", header, rows))


def _change_control_section(context: _Context) -> str:
    """Every version's gate verdict with its per-site checks, power warnings and sign-offs."""
    title = "Change control: gate verdicts and sign-offs"
    stored = current_policy(context.store)
    origin = "defaults" if stored.id is None else f"version {stored.id}"
    policy = ", ".join(f"{key} = {value}" for key, value in stored.policy.to_dict().items())
    body = (
        f"<p>Acceptance policy in force ({_text(origin)}): <code>{_text(policy)}</code>. On every past site the "
        "mean paired per-case Dice change (new − parent, points) must have its one-sided lower confidence bound "
        "(seeded paired bootstrap over the audit cases) above −margin; the interval shown is the two-sided "
        "interval whose lower end is that bound. Held versions are not activated until approved.</p>"
    )
    status = statuses(context.store)
    header = ["site", "role", "parent Dice", "new Dice", "mean change [interval] (n)", "margin", "verdict", "reasons"]
    for version in context.versions:
        result = gate_result(context.store, version.id)
        heading = f"v{version.id} ({version.strategy} on {version.site}): {status[version.id]}"
        if result is None:
            body += f"<h3>{_text(heading)}</h3><p>Made before change control: no gate decision.</p>"
            continue
        rows = [
            [check.site, check.role, _points(check.parent_dice), _points(check.new_dice),
             change_text(check), MISSING if check.margin is None else f"−{check.margin:g}", check.verdict,
             "; ".join(check.reasons)]
            for check in result.sites
        ]
        body += f"<h3>{_text(heading)}</h3><p>{_text(result.summary())}</p>"
        body += _table(f"gate-v{version.id}", header, rows)
        body += "".join(f'<p class="note">Power warning: {_text(warning)}</p>' for warning in result.warnings)
        for signoff in signoffs(context.store, version.id):
            line = f"{signoff.action.capitalize()} by {signoff.by or 'unnamed'} on {_created(signoff.created)}: {signoff.reason}"
            body += f"<p>{_text(line)}</p>"
    return _section("change-control", title, body)


def _points(points: float | None) -> str:
    return format_dice_points(None if points is None else points / 100.0)


def _created(created: str) -> str:
    """A store timestamp (ISO 8601) as ``YYYY-MM-DD HH:MM UTC``."""
    return datetime.fromisoformat(created).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _key_config(config: dict[str, Any]) -> list[str]:
    """epochs, lr, buffer budget, λ_cna, λ_cra, kernel and pairing of a version's config (``–`` when absent)."""

    def setting(section: str, key: str) -> str:
        value = config.get(section, {}).get(key)
        return MISSING if value is None else str(value)

    buffer = f"{setting('continual', 'buffer_samples')} samples / {setting('continual', 'buffer_megabytes')} MB"
    return [
        setting("train", "epochs"),
        setting("train", "lr"),
        buffer,
        setting("continual", "lambda_cna"),
        setting("continual", "lambda_cra"),
        setting("continual", "kernel"),
        setting("continual", "pairing"),
    ]
