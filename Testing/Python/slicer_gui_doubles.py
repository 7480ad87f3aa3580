"""Small test doubles of what the Slicer application adds to the MRML data layer: ``qt``, ``ctk``,
``slicer.app``, ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper``.

They are strict where the module could be wrong: a widget class, signal, slot or Qt property the
double does not know is an error (so a typo in the module or in the ``.ui`` fails a test), a
parameter bound to a widget type Slicer cannot bind fails like Slicer does, and an exception in a
slot is recorded (as PythonQt prints it) instead of vanishing. The real ``slicer.util.loadUI``,
``childWidgetVariables`` and ``VTKObservationMixin`` run on top of them; the ``.ui`` file is built
into double widgets by :class:`QUiLoader`.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import pathlib
import sys
import traceback
import types
import typing
import unittest
import xml.etree.ElementTree as ElementTree
from typing import Any, Callable, ClassVar

import slicer

#: Exceptions raised inside slots (PythonQt prints them and carries on).
UNHANDLED: list[BaseException] = []
#: Every ``QTimer`` created, in order.
TIMERS: list["QTimer"] = []


def _merged(cls: type, attribute: str) -> dict:
    merged: dict = {}
    for klass in reversed(cls.__mro__):
        value = klass.__dict__.get(attribute)
        if isinstance(value, dict):
            merged.update(value)
        elif isinstance(value, (set, frozenset)):
            merged.update(dict.fromkeys(value))
    return merged


def _call_slot(slot: Callable, args: tuple) -> None:
    """Call a slot with as many arguments as it accepts (PythonQt does the same)."""
    try:
        parameters = inspect.signature(slot).parameters.values()
        if any(p.kind is p.VAR_POSITIONAL for p in parameters):
            count = len(args)
        else:
            count = sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    except (TypeError, ValueError):
        count = len(args)
    try:
        slot(*args[:count])
    except Exception as error:  # a slot must not take the event loop down
        traceback.print_exc()
        UNHANDLED.append(error)


# -- qt -----------------------------------------------------------------------------------------
class QObject:
    """Signals by their C++ signature, Qt properties as attributes, dynamic properties, children."""

    SIGNALS: ClassVar[set[str]] = {"destroyed()", "objectNameChanged(QString)"}
    SLOTS: ClassVar[set[str]] = {"deleteLater()"}
    PROPS: ClassVar[dict[str, Any]] = {"objectName": ""}

    def __init__(self, parent: "QObject | None" = None) -> None:
        object.__setattr__(self, "_props", dict(_merged(type(self), "PROPS")))
        object.__setattr__(self, "_dynamic", {})
        object.__setattr__(self, "_connections", {})
        object.__setattr__(self, "_children", [])
        object.__setattr__(self, "_parent", None)
        if parent is not None:
            self.setParent(parent)

    def __getattr__(self, name: str) -> Any:
        props = object.__getattribute__(self, "_props")
        if name in props:
            return props[name]
        if name.startswith("set") and len(name) > 3:
            prop = name[3].lower() + name[4:]
            if prop in props:
                return lambda value: setattr(self, prop, value)
        raise AttributeError(f"{type(self).__name__} has no attribute, property or setter {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or any(name in klass.__dict__ for klass in type(self).__mro__):
            object.__setattr__(self, name, value)
            return
        props = object.__getattribute__(self, "_props")
        if name not in props:
            raise AttributeError(f"{type(self).__name__} has no Qt property {name!r}")
        old = props[name]
        props[name] = value
        if old != value:
            self._propertyChanged(name, value)

    def _propertyChanged(self, name: str, value: Any) -> None:
        """Emit the notify signal of a property, if any."""

    @property
    def name(self) -> str:
        return self._props["objectName"]

    def className(self) -> str:
        return type(self).__name__

    def setParent(self, parent: "QObject | None") -> None:
        if self._parent is not None:
            self._parent._children.remove(self)
        object.__setattr__(self, "_parent", parent)
        if parent is not None:
            parent._children.append(self)

    def parent(self) -> "QObject | None":
        return self._parent

    def children(self) -> list["QObject"]:
        return list(self._children)

    def findChildren(self, cls: type | None = None) -> list["QObject"]:
        found = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found.extend(child.findChildren(cls))
        return found

    def setProperty(self, name: str, value: Any) -> None:
        if name in self._props:
            setattr(self, name, value)
        else:
            self._dynamic[name] = value

    def property(self, name: str) -> Any:
        if name in self._props:
            return self._props[name]
        return self._dynamic.get(name)

    def connect(self, signal: str, slot: Callable) -> bool:
        if signal not in _merged(type(self), "SIGNALS"):
            raise AttributeError(f"{type(self).__name__} has no signal {signal!r}")
        self._connections.setdefault(signal, []).append(slot)
        return True

    def disconnect(self, signal: str, slot: Callable | None = None) -> bool:
        slots = self._connections.get(signal, [])
        if slot is None:
            slots.clear()
        elif slot in slots:
            slots.remove(slot)
        return True

    def connections(self, signal: str) -> list[Callable]:
        """Test helper: the slots connected to a signal."""
        return list(self._connections.get(signal, []))

    def emit(self, signal: str, *args: Any) -> None:
        if signal not in _merged(type(self), "SIGNALS"):
            raise AttributeError(f"{type(self).__name__} has no signal {signal!r}")
        for slot in list(self._connections.get(signal, [])):
            _call_slot(slot, args)


class QTimer(QObject):
    SIGNALS = {"timeout()"}
    PROPS = {"interval": 0, "singleShot": False, "active": False}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        TIMERS.append(self)

    def start(self, msec: int | None = None) -> None:
        if msec is not None:
            self.interval = msec
        self._props["active"] = True

    def stop(self) -> None:
        self._props["active"] = False

    def isActive(self) -> bool:
        return self._props["active"]

    def fire(self) -> None:
        """Test helper: one tick of the timer (only while it is active)."""
        if self.isActive():
            if self.singleShot:
                self.stop()
            self.emit("timeout()")


class QWidget(QObject):
    SIGNALS = {"customContextMenuRequested(QPoint)"}
    SLOTS = {"setEnabled(bool)", "setVisible(bool)", "show()", "hide()"}
    PROPS = {"enabled": True, "visible": True, "toolTip": "", "styleSheet": "", "windowTitle": "",
             "minimumSize": None, "maximumSize": None, "geometry": None, "sizePolicy": None}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        object.__setattr__(self, "_layout", None)

    def setLayout(self, layout: "QLayout") -> None:
        object.__setattr__(self, "_layout", layout)
        layout.setParent(self)

    def layout(self) -> "QLayout | None":
        return self._layout

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def isVisible(self) -> bool:
        return self.visible


class QLayout(QObject):
    PROPS = {"spacing": 0, "leftMargin": 0, "topMargin": 0, "rightMargin": 0, "bottomMargin": 0}

    def addWidget(self, widget: QWidget, *args: Any) -> None:
        widget.setParent(self.parent())

    def addRow(self, *items: Any) -> None:
        for item in items:
            if isinstance(item, QWidget):
                self.addWidget(item)


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QLabel(QWidget):
    PROPS = {"text": "", "wordWrap": False, "alignment": None}


class QAbstractButton(QWidget):
    SIGNALS = {"clicked()", "clicked(bool)", "toggled(bool)", "pressed()", "released()"}
    SLOTS = {"click()", "toggle()", "setChecked(bool)"}
    PROPS = {"text": "", "checkable": False, "checked": False}

    def click(self) -> None:
        """Like a user click: nothing happens on a disabled button."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.emit("clicked()")
        self.emit("clicked(bool)", self.checked)

    def _propertyChanged(self, name: str, value: Any) -> None:
        if name == "checked":
            self.emit("toggled(bool)", value)


class QPushButton(QAbstractButton):
    PROPS = {"default": False, "autoDefault": False, "flat": False}


class QCheckBox(QAbstractButton):
    SIGNALS = {"stateChanged(int)"}
    PROPS = {"checked": False, "checkable": True}

    def _propertyChanged(self, name: str, value: Any) -> None:
        super()._propertyChanged(name, value)
        if name == "checked":
            self.emit("stateChanged(int)", 2 if value else 0)


class QComboBox(QWidget):
    SIGNALS = {"currentIndexChanged(int)", "currentTextChanged(QString)", "activated(int)"}
    SLOTS = {"setCurrentIndex(int)", "clear()"}
    PROPS = {"currentIndex": -1, "editable": False}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        object.__setattr__(self, "_items", [])

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def currentText(self) -> str:
        index = self.currentIndex
        return self._items[index] if 0 <= index < len(self._items) else ""

    def addItem(self, text: str, userData: Any = None) -> None:
        self._items.append(str(text))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def itemText(self, index: int) -> str:
        return self._items[index]

    def clear(self) -> None:
        self._items.clear()
        self.currentIndex = -1

    def _propertyChanged(self, name: str, value: Any) -> None:
        if name == "currentIndex":
            if not -1 <= value < max(1, len(self._items)) or (value >= 0 and not self._items):
                raise IndexError(f"combo box {self.name}: index {value} out of range of {len(self._items)} items")
            self.emit("currentIndexChanged(int)", value)
            self.emit("currentTextChanged(QString)", self.currentText)


class QLineEdit(QWidget):
    SIGNALS = {"textChanged(QString)", "editingFinished()", "returnPressed()"}
    PROPS = {"text": "", "placeholderText": "", "echoMode": 0, "readOnly": False}
    Normal = 0
    Password = 2

    def _propertyChanged(self, name: str, value: Any) -> None:
        if name == "text":
            self.emit("textChanged(QString)", value)


class QAbstractSpinBox(QWidget):
    SIGNALS = {"editingFinished()"}
    PROPS = {"minimum": 0, "maximum": 99, "singleStep": 1, "value": 0, "suffix": "", "prefix": ""}
    VALUE_SIGNAL = ""

    def setRange(self, minimum: Any, maximum: Any) -> None:
        self.minimum, self.maximum = minimum, maximum

    def _propertyChanged(self, name: str, value: Any) -> None:
        if name == "value":
            clamped = min(max(value, self.minimum), self.maximum)
            if clamped != value:
                self._props["value"] = clamped
            self.emit(self.VALUE_SIGNAL, self._props["value"])
        elif name in ("minimum", "maximum"):
            self._props["value"] = min(max(self._props["value"], self.minimum), self.maximum)


class QSpinBox(QAbstractSpinBox):
    SIGNALS = {"valueChanged(int)"}
    VALUE_SIGNAL = "valueChanged(int)"


class QDoubleSpinBox(QAbstractSpinBox):
    SIGNALS = {"valueChanged(double)"}
    PROPS = {"decimals": 2, "minimum": 0.0, "maximum": 99.99, "singleStep": 1.0, "value": 0.0}
    VALUE_SIGNAL = "valueChanged(double)"


class QSlider(QAbstractSpinBox):
    SIGNALS = {"valueChanged(int)"}
    VALUE_SIGNAL = "valueChanged(int)"


class QProgressBar(QWidget):
    SIGNALS = {"valueChanged(int)"}
    PROPS = {"value": 0, "minimum": 0, "maximum": 100, "textVisible": True, "format": "%p%"}

    def setRange(self, minimum: int, maximum: int) -> None:
        self.minimum, self.maximum = minimum, maximum


class QProgressDialog(QWidget):
    """Shown by the module for installs, uploads and audit loads; every dialog shown is recorded."""

    SIGNALS = {"canceled()"}
    PROPS = {"labelText": "", "value": 0, "minimum": 0, "maximum": 100, "minimumDuration": 4000}
    SHOWN: ClassVar[list["QProgressDialog"]] = []

    def setRange(self, minimum: int, maximum: int) -> None:
        self.minimum, self.maximum = minimum, maximum

    def show(self) -> None:
        super().show()
        QProgressDialog.SHOWN.append(self)

    def close(self) -> bool:
        self.visible = False
        return True

    def cancel(self) -> None:
        """Test helper: the user presses Cancel."""
        self.emit("canceled()")


class QPlainTextEdit(QWidget):
    SIGNALS = {"textChanged()"}
    PROPS = {"readOnly": False, "maximumBlockCount": 0, "plainText": ""}

    def appendPlainText(self, text: str) -> None:
        current = self.plainText
        self.plainText = f"{current}\n{text}" if current else str(text)

    def toPlainText(self) -> str:
        return self.plainText

    def clear(self) -> None:
        self.plainText = ""

    def _propertyChanged(self, name: str, value: Any) -> None:
        if name == "plainText":
            self.emit("textChanged()")


class QTableWidgetItem:
    def __init__(self, text: str = "") -> None:
        self._text = str(text)
        self._display: Any = None
        self.tooltip = ""

    def text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:
        self._text, self._display = str(text), None

    def setData(self, role: int, value: Any) -> None:
        if role != Qt.DisplayRole:
            raise ValueError(f"role {role} is not used by the module")
        self._text, self._display = str(value), value

    def data(self, role: int) -> Any:
        return self._display if self._display is not None else self._text

    def setToolTip(self, text: str) -> None:
        self.tooltip = text


class QHeaderView(QObject):
    Interactive, Stretch, ResizeToContents = 0, 1, 3

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "resize_mode", self.Interactive)

    def setSectionResizeMode(self, mode: int) -> None:
        object.__setattr__(self, "resize_mode", mode)


class QAbstractItemView(QWidget):
    NoEditTriggers = 0
    SingleSelection = 1
    SelectRows = 1
    PROPS = {"editTriggers": 0, "selectionMode": 1, "selectionBehavior": 0, "alternatingRowColors": False,
             "horizontalScrollBarPolicy": None, "sortingEnabled": False}

    def horizontalHeader(self) -> QHeaderView:
        if "_header" not in self.__dict__:
            object.__setattr__(self, "_header", QHeaderView())
        return self._header


class QTableView(QAbstractItemView):
    pass


class QTableWidget(QAbstractItemView):
    SIGNALS = {"itemSelectionChanged()", "cellClicked(int,int)", "currentCellChanged(int,int,int,int)"}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        object.__setattr__(self, "_cells", {})
        object.__setattr__(self, "_rows", 0)
        object.__setattr__(self, "_columns", [])
        object.__setattr__(self, "_current", -1)

    def setColumnCount(self, count: int) -> None:
        object.__setattr__(self, "_columns", self._columns[:count] + [""] * max(0, count - len(self._columns)))

    def setHorizontalHeaderLabels(self, labels: list[str]) -> None:
        object.__setattr__(self, "_columns", list(labels))

    def columnCount(self) -> int:
        return len(self._columns)

    def rowCount(self) -> int:
        return self._rows

    def setRowCount(self, rows: int) -> None:
        object.__setattr__(self, "_rows", rows)
        for key in [key for key in self._cells if key[0] >= rows]:
            del self._cells[key]
        if self._current >= rows:
            object.__setattr__(self, "_current", -1)

    def setItem(self, row: int, column: int, item: QTableWidgetItem) -> None:
        if not (0 <= row < self._rows and 0 <= column < len(self._columns)):
            raise IndexError(f"table {self.name}: cell ({row}, {column}) outside {self._rows} x {len(self._columns)}")
        self._cells[(row, column)] = item

    def item(self, row: int, column: int) -> QTableWidgetItem | None:
        return self._cells.get((row, column))

    def currentRow(self) -> int:
        return self._current

    def selectRow(self, row: int) -> None:
        object.__setattr__(self, "_current", row)
        self.emit("itemSelectionChanged()")

    def sortItems(self, column: int, order: int = 0) -> None:
        """Sort rows by the column's display data (numbers before text, as Qt compares variants)."""
        rows = [[self._cells.get((row, c)) for c in range(len(self._columns))] for row in range(self._rows)]

        def key(cells: list) -> tuple:
            value = cells[column].data(Qt.DisplayRole) if cells[column] is not None else None
            return (0, value) if isinstance(value, (int, float)) else (1, str(value))

        rows.sort(key=key, reverse=order == Qt.DescendingOrder)
        object.__setattr__(self, "_cells", {(r, c): cell for r, cells in enumerate(rows) for c, cell in enumerate(cells)
                                            if cell is not None})

    def clickRow(self, row: int) -> None:
        """Test helper: the user clicks a row (Qt selects it, then emits cellClicked)."""
        self.selectRow(row)
        self.emit("cellClicked(int,int)", row, 0)


class QFile:
    ReadOnly = 1

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def open(self, mode: int) -> bool:
        return self.exists()


class QFileDialog:
    """Answers ``getOpenFileNames`` with the paths a test puts in ``CHOSEN`` (an empty list: Cancel)."""

    CHOSEN: ClassVar[list[str]] = []

    @staticmethod
    def getOpenFileNames(parent: Any = None, caption: str = "", directory: str = "", filter: str = "") -> list[str]:
        return list(QFileDialog.CHOSEN)


class QApplication:
    override_cursors: ClassVar[list[Any]] = []

    @staticmethod
    def setOverrideCursor(cursor: Any) -> None:
        QApplication.override_cursors.append(cursor)

    @staticmethod
    def restoreOverrideCursor() -> None:
        QApplication.override_cursors.pop()


class Qt:
    WaitCursor = 3
    BusyCursor = 16
    Vertical = 2
    Horizontal = 1
    DisplayRole = 0
    AscendingOrder, DescendingOrder = 0, 1


class QKeySequence:
    def __init__(self, key: str) -> None:
        self.key = key


class QShortcut(QObject):
    """Every shortcut created is recorded with its key; ``activate()`` is a test helper (the key press)."""

    SIGNALS = {"activated()"}
    CREATED: ClassVar[list["QShortcut"]] = []

    def __init__(self, key: QKeySequence, parent: QObject | None = None) -> None:
        super().__init__(parent)
        object.__setattr__(self, "key", key.key)
        QShortcut.CREATED.append(self)

    def activate(self) -> None:
        if self.parent() is not None:
            self.emit("activated()")


class QStatusBar(QObject):
    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "messages", [])

    def showMessage(self, text: str, timeout: int = 0) -> None:
        self.messages.append(text)


class QSystemTrayIcon(QObject):
    """``available`` and ``MESSAGES`` are test controls/records."""

    available: ClassVar[bool] = True
    MESSAGES: ClassVar[list[str]] = []

    def __init__(self, icon: Any = None, parent: QObject | None = None) -> None:
        super().__init__(parent)

    @staticmethod
    def isSystemTrayAvailable() -> bool:
        return QSystemTrayIcon.available

    def show(self) -> None:
        return None

    def showMessage(self, title: str, text: str) -> None:
        QSystemTrayIcon.MESSAGES.append(text)


class MainWindow(QObject):
    """``slicer.util.mainWindow()``; ``active`` says whether it has the focus."""

    PROPS = {"windowIcon": None}
    active: bool = True

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "_status", QStatusBar())

    def statusBar(self) -> QStatusBar:
        return self._status

    def isActiveWindow(self) -> bool:
        return self.active


# -- ctk ----------------------------------------------------------------------------------------
class ctkCollapsibleButton(QAbstractButton):
    SIGNALS = {"contentsCollapsed(bool)"}
    PROPS = {"collapsed": False, "checkable": True, "checked": True}

    def _propertyChanged(self, name: str, value: Any) -> None:
        super()._propertyChanged(name, value)
        if name == "collapsed":
            self.emit("contentsCollapsed(bool)", value)


class ctkCollapsibleGroupBox(QWidget):
    SIGNALS = {"toggled(bool)"}
    PROPS = {"title": "", "collapsed": False, "checkable": True, "checked": True}


class ctkPathLineEdit(QWidget):
    SIGNALS = {"currentPathChanged(QString)", "validInputChanged(bool)"}
    PROPS = {"currentPath": "", "filters": None, "nameFilters": None}
    Dirs = 1
    Files = 2

    def _propertyChanged(self, name: str, value: Any) -> None:
        if name == "currentPath":
            self.emit("currentPathChanged(QString)", value)


# -- the qMRML widgets the .ui uses (in Slicer they live in the slicer namespace) ------------------
class qMRMLWidget(QWidget):
    SIGNALS = {"mrmlSceneChanged(vtkMRMLScene*)"}
    SLOTS = {"setMRMLScene(vtkMRMLScene*)"}

    def setMRMLScene(self, scene: "slicer.vtkMRMLScene") -> None:
        object.__setattr__(self, "_scene", scene)
        self.emit("mrmlSceneChanged(vtkMRMLScene*)", scene)

    def mrmlScene(self) -> "slicer.vtkMRMLScene | None":
        return getattr(self, "_scene", None)


class qMRMLNodeComboBox(qMRMLWidget):
    SIGNALS = {"currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)", "currentNodeIDChanged(QString)"}
    PROPS = {"nodeTypes": [], "showChildNodeTypes": True, "noneEnabled": False, "addEnabled": True,
             "removeEnabled": True, "renameEnabled": False, "editEnabled": False, "selectNodeUponCreation": True}

    def setMRMLScene(self, scene: "slicer.vtkMRMLScene") -> None:
        object.__setattr__(self, "_scene", scene)
        object.__setattr__(self, "_node", None)

    def _accepts(self, node: Any) -> bool:
        if self.showChildNodeTypes:
            return any(node.IsA(node_type) for node_type in self.nodeTypes)
        return node.GetClassName() in self.nodeTypes

    def setCurrentNode(self, node: Any) -> None:
        if node is not None and not self._accepts(node):
            raise TypeError(f"{self.name} accepts {self.nodeTypes}, not a {node.GetClassName()}")
        object.__setattr__(self, "_node", node)
        self.emit("currentNodeChanged(vtkMRMLNode*)", node)
        self.emit("currentNodeChanged(bool)", node is not None)

    def currentNode(self) -> Any:
        return getattr(self, "_node", None)


class qMRMLTableView(QTableView, qMRMLWidget):
    SLOTS = {"setMRMLTableNode(vtkMRMLNode*)"}

    def setMRMLTableNode(self, node: Any) -> None:
        object.__setattr__(self, "_table", node)

    def mrmlTableNode(self) -> Any:
        return getattr(self, "_table", None)


WIDGET_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (
    QWidget, QLabel, QPushButton, QCheckBox, QComboBox, QLineEdit, QSpinBox, QDoubleSpinBox, QSlider, QProgressBar,
    QPlainTextEdit, QTableView, QTableWidget, ctkCollapsibleButton, ctkCollapsibleGroupBox, ctkPathLineEdit,
    qMRMLWidget, qMRMLNodeComboBox, qMRMLTableView)}
LAYOUT_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (QVBoxLayout, QHBoxLayout, QFormLayout, QGridLayout)}


class QUiLoader:
    """Builds double widgets from a Qt Designer file; unknown classes, signals or slots are errors."""

    def load(self, qfile: QFile) -> QWidget:
        root = ElementTree.parse(qfile.path).getroot()
        by_name: dict[str, QObject] = {}
        top = self._widget(root.find("widget"), None, by_name)
        for connection in root.iter("connection"):
            sender = by_name[connection.findtext("sender")]
            receiver = by_name[connection.findtext("receiver")]
            signal, slot = connection.findtext("signal"), connection.findtext("slot")
            if slot not in _merged(type(receiver), "SLOTS"):
                raise AttributeError(f"{type(receiver).__name__} has no slot {slot!r}")
            method = getattr(receiver, slot.split("(")[0])
            sender.connect(signal, method)
        return top

    def _widget(self, element: ElementTree.Element, parent: QObject | None, by_name: dict) -> QWidget:
        class_name = element.get("class")
        if class_name not in WIDGET_CLASSES:
            raise TypeError(f"the test doubles have no widget class {class_name!r}")
        widget = WIDGET_CLASSES[class_name](parent)
        self._configure(widget, element, by_name)
        for child in element:
            if child.tag == "widget":
                self._widget(child, widget, by_name)
            elif child.tag == "layout":
                self._layout(child, widget, by_name)
            elif child.tag == "column" and isinstance(widget, QTableWidget):
                widget.setHorizontalHeaderLabels(widget._columns + [_value(child.find("property"))])
        return widget

    def _layout(self, element: ElementTree.Element, owner: QWidget, by_name: dict) -> None:
        class_name = element.get("class")
        if class_name not in LAYOUT_CLASSES:
            raise TypeError(f"the test doubles have no layout class {class_name!r}")
        layout = LAYOUT_CLASSES[class_name]()
        self._configure(layout, element, by_name)
        owner.setLayout(layout)
        for item in element.findall("item"):
            for child in item:
                if child.tag == "widget":
                    self._widget(child, owner, by_name)
                elif child.tag == "layout":
                    self._layout(child, owner, by_name)

    @staticmethod
    def _configure(obj: QObject, element: ElementTree.Element, by_name: dict) -> None:
        obj._props["objectName"] = element.get("name", "")
        by_name[obj.name] = obj
        for prop in element.findall("property"):
            name, value = prop.get("name"), _value(prop)
            if prop.get("stdset") == "0":
                obj._dynamic[name] = value
            else:
                obj._props[name] = value


def _value(prop: ElementTree.Element) -> Any:
    node = next(iter(prop))
    if node.tag in ("string", "enum", "set"):
        return node.text or ""
    if node.tag == "bool":
        return node.text == "true"
    if node.tag == "number":
        return int(node.text)
    if node.tag == "double":
        return float(node.text)
    if node.tag == "stringlist":
        return [item.text or "" for item in node]
    return None


# -- slicer.app ---------------------------------------------------------------------------------
class ProcessEnvironment:
    """What ``QProcessEnvironment`` offers to ``slicer.util.startupEnvironment``."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)

    def keys(self) -> list[str]:
        return list(self.values)

    def value(self, key: str) -> str:
        return self.values[key]


class LayoutManager:
    def __init__(self) -> None:
        self.layouts: list[int] = []
        self.slice_view_resets = 0

    def setLayout(self, layout: int) -> None:
        self.layouts.append(layout)

    def resetSliceViews(self) -> None:
        self.slice_view_resets += 1


class ApplicationLogic:
    def __init__(self, scene: "slicer.vtkMRMLScene") -> None:
        self.selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode") or scene.AddNewNodeByClass("vtkMRMLSelectionNode")
        self.propagated: list[str] = []

    def GetSelectionNode(self) -> "slicer.vtkMRMLSelectionNode":
        return self.selection

    def PropagateTableSelection(self) -> None:
        self.propagated.append("table")

    def PropagatePlotChartSelection(self) -> None:
        self.propagated.append("plot")


class Application:
    """The parts of ``slicer.app`` the module uses."""

    applicationName = "Slicer"

    def __init__(self, scene: "slicer.vtkMRMLScene", temporary_path: str) -> None:
        self.temporaryPath = temporary_path
        self._layout_manager = LayoutManager()
        self._application_logic = ApplicationLogic(scene)

    def testingEnabled(self) -> bool:
        return False

    def processEvents(self) -> None:
        return None

    def layoutManager(self) -> LayoutManager:
        return self._layout_manager

    def applicationLogic(self) -> ApplicationLogic:
        return self._application_logic

    def startupEnvironment(self) -> ProcessEnvironment:
        return ProcessEnvironment(dict(os.environ))


# -- slicer.ScriptedLoadableModule ----------------------------------------------------------------
class ModulePanel(QWidget):
    """The ``qSlicerScriptedLoadableModuleWidget`` a module widget is given as parent."""

    PROPS = {"isEntered": False}


class ScriptedLoadableModule:
    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent: QWidget | None = None) -> None:
        self.developerMode = False
        self.moduleName = type(self).__name__[: -len("Widget")]
        if parent is None:
            parent = ModulePanel()
            parent.setLayout(QVBoxLayout())
        self.parent = parent
        self.layout = parent.layout()

    def resourcePath(self, filename: str) -> str:
        module_file = sys.modules[type(self).__module__].__file__
        return os.path.join(os.path.dirname(module_file), "Resources", filename)

    def setup(self) -> None:
        return None

    def cleanup(self) -> None:
        return None


class ScriptedLoadableModuleLogic:
    def __init__(self, parent: Any = None) -> None:
        self.moduleName = type(self).__name__[: -len("Logic")]

    def getParameterNode(self) -> "slicer.vtkMRMLScriptedModuleNode":
        scene = slicer.mrmlScene
        nodes = scene.GetNodesByClass("vtkMRMLScriptedModuleNode")
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if node.GetAttribute("ModuleName") == self.moduleName:
                return node
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetName(scene.GenerateUniqueName(self.moduleName))
        node.SetAttribute("ModuleName", self.moduleName)
        scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 100) -> None:
        print(message)


# -- slicer.parameterNodeWrapper ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Choice:
    choices: list

    def validate(self, value: Any) -> None:
        if value not in self.choices:
            raise ValueError(f"{value!r} is not one of {self.choices}")


@dataclasses.dataclass(frozen=True)
class WithinRange:
    minimum: float
    maximum: float

    def validate(self, value: Any) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"{value!r} is not within [{self.minimum}, {self.maximum}]")


@dataclasses.dataclass
class _Field:
    base: type
    annotations: tuple
    default: Any

    @property
    def is_node(self) -> bool:
        return isinstance(self.base, type) and issubclass(self.base, slicer.vtkMRMLNode)


def _connector(widget: QObject, field: _Field) -> tuple[str, Callable[[], Any], Callable[[Any], None]]:
    """(change signal, read, write) for a widget bound to a field; the pairs Slicer's connectors accept."""
    kind, base = type(widget), field.base
    choice = next((a for a in field.annotations if isinstance(a, Choice)), None)
    bounds = next((a for a in field.annotations if isinstance(a, WithinRange)), None)
    if kind is QCheckBox and base is bool:
        return "toggled(bool)", lambda: widget.checked, lambda v: setattr(widget, "checked", v)
    if kind in (QSpinBox, QSlider, QDoubleSpinBox) and base is (float if kind is QDoubleSpinBox else int):
        if bounds is not None:
            widget.setRange(bounds.minimum, bounds.maximum)
        return widget.VALUE_SIGNAL, lambda: widget.value, lambda v: setattr(widget, "value", v)
    if kind is QComboBox and base in (str, int, float, bool):
        if choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        widget.clear()
        for item in choice.choices:
            widget.addItem(str(item))
        return ("currentIndexChanged(int)", lambda: choice.choices[widget.currentIndex],
                lambda v: setattr(widget, "currentIndex", choice.choices.index(v)))
    if kind is QLineEdit and base is str:
        return "textChanged(QString)", lambda: widget.text, lambda v: setattr(widget, "text", v)
    if kind is ctkPathLineEdit and base in (pathlib.Path, pathlib.PurePath):
        return "currentPathChanged(QString)", lambda: pathlib.Path(widget.currentPath), lambda v: setattr(widget, "currentPath", str(v))
    if kind is qMRMLNodeComboBox and field.is_node:
        return "currentNodeChanged(vtkMRMLNode*)", widget.currentNode, widget.setCurrentNode
    raise RuntimeError(f"Unable to create GUI connector from datatype '{base}' to widget type '{kind}'")


class _ParameterNodeWrapper:
    _fields: ClassVar[dict[str, _Field]] = {}
    _tags = itertools.count(1)

    def __init__(self, parameterNode: "slicer.vtkMRMLScriptedModuleNode") -> None:
        object.__setattr__(self, "parameterNode", parameterNode)
        object.__setattr__(self, "_guis", {})
        for name, field in self._fields.items():
            if not field.is_node and not parameterNode.GetParameter(name):
                setattr(self, name, field.default)

    @classmethod
    def dataType(cls, name: str) -> type:
        return cls._fields[name].base

    def __getattr__(self, name: str) -> Any:
        fields = type(self)._fields
        if name not in fields:
            raise AttributeError(f"{type(self).__name__} has no parameter {name!r}")
        field = fields[name]
        if field.is_node:
            return self.parameterNode.GetNodeReference(name)
        text = self.parameterNode.GetParameter(name)
        if field.base is bool:
            return text == "True"
        return field.base(text)

    def __setattr__(self, name: str, value: Any) -> None:
        fields = type(self)._fields
        if name not in fields:
            raise AttributeError(f"{type(self).__name__} has no parameter {name!r}")
        field = fields[name]
        if field.is_node:
            if value is not None and not isinstance(value, field.base):
                raise TypeError(f"{name} must be a {field.base.__name__}")
            self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            return
        if not isinstance(value, field.base) and not (field.base is float and isinstance(value, int)):
            raise TypeError(f"{name} must be {field.base.__name__}, got {value!r}")
        for annotation in field.annotations:
            annotation.validate(value)
        self.parameterNode.SetParameter(name, str(value))

    def AddObserver(self, event: Any, callback: Callable, priority: float = 0.0) -> int:
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag: int) -> None:
        self.parameterNode.RemoveObserver(tag)

    def connectGui(self, gui: Any) -> int:
        widgets = gui.findChildren() if isinstance(gui, QObject) else [v for v in vars(gui).values() if isinstance(v, QObject)]
        bindings = []
        for widget in widgets:
            name = widget.property("SlicerParameterName")
            if not name:
                continue
            if name not in self._fields:
                raise ValueError(f"widget {widget.name} is bound to unknown parameter {name!r}")
            signal, read, write = _connector(widget, self._fields[name])
            write(getattr(self, name))

            def fromWidget(*_: Any, name: str = name, read: Callable = read) -> None:
                if getattr(self, name) != read():
                    setattr(self, name, read())

            widget.connect(signal, fromWidget)
            bindings.append((widget, signal, fromWidget, name, read, write))

        def fromNode(caller: Any, event: Any) -> None:
            for _, _, _, name, read, write in bindings:
                if read() != getattr(self, name):
                    write(getattr(self, name))

        tag = next(self._tags)
        self._guis[tag] = (bindings, self.parameterNode.AddObserver("ModifiedEvent", fromNode))
        return tag

    def disconnectGui(self, tag: int | None) -> None:
        if tag not in self._guis:
            return
        bindings, observer = self._guis.pop(tag)
        for widget, signal, slot, *_ in bindings:
            widget.disconnect(signal, slot)
        self.parameterNode.RemoveObserver(observer)


def parameterNodeWrapper(cls: type) -> type:
    """Class decorator: typed attributes stored in a ``vtkMRMLScriptedModuleNode``."""
    module = sys.modules[cls.__module__]
    hints = typing.get_type_hints(cls, globalns=vars(module), include_extras=True)
    fields = {}
    for name, hint in hints.items():
        annotations: tuple = ()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extra = typing.get_args(hint)
            annotations = tuple(extra)
        default = cls.__dict__.get(name)
        if default is None and not (isinstance(hint, type) and issubclass(hint, slicer.vtkMRMLNode)):
            default = hint()
        fields[name] = _Field(hint, annotations, default)
    return type(cls.__name__, (_ParameterNodeWrapper,), {"_fields": fields, "__doc__": cls.__doc__, "__module__": cls.__module__})


# -- installation ---------------------------------------------------------------------------------
def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def install(monkeypatch: Any, scene: "slicer.vtkMRMLScene", temporary_path: pathlib.Path) -> types.SimpleNamespace:
    """Put the doubles in place for one test (``monkeypatch`` undoes it); returns what tests inspect."""
    UNHANDLED.clear()
    TIMERS.clear()
    QProgressDialog.SHOWN.clear()
    QFileDialog.CHOSEN.clear()
    QShortcut.CREATED.clear()
    QSystemTrayIcon.MESSAGES.clear()
    QSystemTrayIcon.available = True
    QApplication.override_cursors.clear()
    qt_module = _module("qt", **{name: value for name, value in globals().items()
                                 if name.startswith("Q") and isinstance(value, type) or name == "Qt"})
    ctk_module = _module("ctk", ctkCollapsibleButton=ctkCollapsibleButton, ctkCollapsibleGroupBox=ctkCollapsibleGroupBox,
                         ctkPathLineEdit=ctkPathLineEdit)
    monkeypatch.setitem(sys.modules, "qt", qt_module)
    monkeypatch.setitem(sys.modules, "ctk", ctk_module)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", _module(
        "slicer.ScriptedLoadableModule", ScriptedLoadableModule=ScriptedLoadableModule,
        ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest=ScriptedLoadableModuleTest))
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", _module(
        "slicer.parameterNodeWrapper", parameterNodeWrapper=parameterNodeWrapper, Choice=Choice, WithinRange=WithinRange))
    app = Application(scene, str(temporary_path))
    main_window = MainWindow()
    dialogs = types.SimpleNamespace(errors=[], infos=[], confirmations=[], confirm_answer=True)

    def confirm(text: str, windowTitle: str | None = None, **kwargs: Any) -> bool:
        dialogs.confirmations.append(text)
        return dialogs.confirm_answer

    for name, value in (("app", app), ("modules", types.SimpleNamespace()), ("mrmlScene", scene),
                        ("qMRMLWidget", qMRMLWidget), ("qMRMLNodeComboBox", qMRMLNodeComboBox),
                        ("qMRMLTableView", qMRMLTableView)):
        monkeypatch.setattr(slicer, name, value, raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: dialogs.errors.append(text))
    monkeypatch.setattr(slicer.util, "infoDisplay", lambda text, *a, **k: dialogs.infos.append(text))
    monkeypatch.setattr(slicer.util, "delayDisplay", lambda text, *a, **k: dialogs.infos.append(text))
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: main_window)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm)
    return types.SimpleNamespace(app=app, dialogs=dialogs, timers=TIMERS, unhandled=UNHANDLED,
                                 progress_dialogs=QProgressDialog.SHOWN, main_window=main_window,
                                 shortcuts=QShortcut.CREATED, tray_messages=QSystemTrayIcon.MESSAGES)
