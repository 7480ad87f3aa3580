"""Draw the module icon (128 x 128 PNG): a brain seen from above holding two overlapping
segmentations, "before" (blue) and "after" (red), their overlap purple.

    QT_QPA_PLATFORM=offscreen .venv/bin/python Resources/make_icon.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QPointF, QRectF, Qt  # noqa: E402
from PySide6.QtGui import QBrush, QColor, QGuiApplication, QImage, QPainter, QPainterPath, QPen  # noqa: E402

OUTPUT = Path(__file__).resolve().parents[1] / "DAKRSegmentation" / "Resources" / "Icons" / "DAKRSegmentation.png"
SIZE = 128


def hemisphere(sign: int) -> QPainterPath:
    """Half of a top view of a brain; ``sign`` -1 is the left half, +1 the right one."""
    def point(x: float, y: float) -> QPointF:
        return QPointF(64 + sign * x, y)

    path = QPainterPath(point(3, 14))
    path.cubicTo(point(34, 8), point(54, 28), point(55, 56))
    path.cubicTo(point(56, 88), point(38, 116), point(3, 114))
    path.closeSubpath()
    return path


def gyri(sign: int) -> QPainterPath:
    """A few folds inside one hemisphere."""
    def point(x: float, y: float) -> QPointF:
        return QPointF(64 + sign * x, y)

    path = QPainterPath(point(14, 32))
    path.cubicTo(point(24, 24), point(34, 40), point(44, 30))
    path.moveTo(point(12, 60))
    path.cubicTo(point(24, 50), point(32, 70), point(46, 58))
    path.moveTo(point(14, 90))
    path.cubicTo(point(24, 80), point(34, 100), point(42, 88))
    return path


def draw(output: Path = OUTPUT) -> Path:
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    image = QImage(SIZE, SIZE, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    brain = hemisphere(-1)
    brain.addPath(hemisphere(1))
    painter.fillPath(brain, QBrush(QColor(240, 230, 220)))
    folds = QPen(QColor(150, 132, 120), 3, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap)
    painter.strokePath(gyri(-1), folds)
    painter.strokePath(gyri(1), folds)
    painter.setClipPath(brain)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(46, 163, 222, 175))
    painter.drawEllipse(QRectF(24, 42, 54, 46))
    painter.setBrush(QColor(230, 77, 61, 175))
    painter.drawEllipse(QRectF(50, 46, 54, 50))
    painter.setClipping(False)
    outline = QPen(QColor(74, 64, 58), 4.5, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin)
    painter.strokePath(hemisphere(-1), outline)
    painter.strokePath(hemisphere(1), outline)
    painter.end()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(output)):
        raise OSError(f"cannot write {output}")
    del app
    return output


if __name__ == "__main__":
    print(draw())
