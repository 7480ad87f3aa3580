"""Reading untrusted volumes in a separate process with a memory and a time limit.

A hostile or broken upload may still cost a lot to read after its header passed (a highly
compressed volume inflating to the byte limit, a reader bug). :func:`register_site_isolated`
(validate, copy and register an uploaded site) and :func:`check_image_isolated` read the files
in a child Python process whose address space may grow by at most the memory budget beyond
what the interpreter and its libraries take at start (``resource.setrlimit(RLIMIT_AS)``, on
Linux; elsewhere only the time limit applies) and which is killed after the time limit, so the
server never holds an uploaded site's voxels and keeps running whatever the files do.
Run as ``python -m dakr.isolation RESULT_FILE MEMORY_BYTES`` with the request as JSON on stdin.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dakr.data.errors import DataError, ImageTooLargeError, SiteValidationError
from dakr.data.headers import declared_bytes, header_reader
from dakr.data.io import image_suffix, read_image
from dakr.data.limits import ImageLimits
from dakr.data.site import CaseFiles, SiteSpec

#: Keep the child's address space small and predictable: one thread for every library.
_CHILD_ENVIRONMENT = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
    "MALLOC_ARENA_MAX": "2",
}


class CheckAbortedError(DataError):
    """The checking process was stopped: it ran past the time limit or crashed."""


def register_site_isolated(
    store_path: Path, name: str, spec: SiteSpec, *, audit_fraction: float, seed: int, limits: ImageLimits | None = None
) -> None:
    """:meth:`dakr.store.Store.add_site` (validate, copy, register) in a child process under ``limits``.

    Raises ``SiteValidationError`` (the data's problems),
    ``StoreError`` or ``ValueError`` (refused by the store), :class:`ImageTooLargeError`
    (reading needs more memory than allowed), ``OSError`` or ``sqlite3.OperationalError``
    (the child's full disk or storage I/O error, raised again here with its cause) or
    :class:`CheckAbortedError` (time limit or crash; the store's atomic writes leave nothing
    registered then).
    """
    request = {
        "task": "register",
        "store": str(store_path),
        "name": name,
        "audit_fraction": audit_fraction,
        "seed": seed,
        "cases": [[case.case_id, str(case.image), str(case.label)] for case in spec.cases],
        "site_labels": spec.label_names,
        "trusted_root": None if spec.trusted_root is None else str(spec.trusted_root),
    }
    folders = {str(path.parent) for case in spec.cases for path in (case.image, case.label)}
    _run(request, os.path.commonpath(folders) if folders else "site", limits or ImageLimits.from_environment())


def check_image_isolated(path: Path, limits: ImageLimits | None = None) -> None:
    """Read the volume at ``path`` (untrusted) in a child process under ``limits``.

    Raises what :func:`dakr.data.io.read_image` raises, plus :class:`ImageTooLargeError` when
    reading needs more memory than allowed and :class:`CheckAbortedError` (time limit or crash).
    """
    _run({"task": "image", "path": str(path)}, str(path), limits or ImageLimits.from_environment())


def _run(request: dict[str, Any], subject: str, limits: ImageLimits) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dakr-check-") as folder:
        result_file = Path(folder) / "result.json"
        command = [sys.executable, "-m", "dakr.isolation", str(result_file), str(limits.validation_memory_bytes)]
        try:
            completed = subprocess.run(
                command,
                input=json.dumps(request).encode(),
                capture_output=True,
                timeout=limits.validation_timeout_s,
                env={**os.environ, **_CHILD_ENVIRONMENT},
            )
        except subprocess.TimeoutExpired:
            raise CheckAbortedError(
                subject,
                f"checking the volumes took longer than the limit of {limits.describe_timeout()} and was stopped",
                "send smaller volumes, or raise the limit where the server runs",
            ) from None
        if not result_file.exists():
            raise _crash(subject, completed, limits)
        result = json.loads(result_file.read_text(encoding="utf-8"))
    if "memory" in result:
        raise ImageTooLargeError(
            subject,
            f"reading the volumes needs more memory than the limit of {limits.describe_memory()}",
            "send smaller volumes, or raise the limit where the server runs",
        )
    if "storage" in result:
        raise _storage_error(result)
    if "refused" in result:
        from dakr.store import StoreError  # the store imports torch; the image-checking child never needs it

        raise (StoreError if result["refused"] == "store" else ValueError)(result["message"])
    problems = [_error(problem) for problem in result.get("problems", [])]
    if result.get("single") and problems:
        raise problems[0]
    if problems:
        raise SiteValidationError(problems)
    return result


def _crash(subject: str, completed: subprocess.CompletedProcess[bytes], limits: ImageLimits) -> CheckAbortedError:
    code = completed.returncode
    how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"stopped with exit code {code}"
    detail = completed.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
    return CheckAbortedError(
        subject,
        f"the process checking the volumes {how} ({detail[0]}); its memory limit is {limits.describe_memory()}",
        "check that the files are complete NIfTI, NRRD or MHA volumes; if they are, send smaller volumes or raise the limit",
    )


def _storage_error(result: dict[str, Any]) -> Exception:
    """The child's full disk or storage I/O error as the exception the store raised there."""
    if result["storage"] == "sqlite":
        return sqlite3.OperationalError(result["message"])
    return OSError(result["errno"], result["message"])


def _error(problem: dict[str, str]) -> DataError:
    kind = ImageTooLargeError if problem.get("too_large") else DataError
    return kind(problem["file"], problem["problem"], problem["fix"])


def _problem(error: DataError) -> dict[str, Any]:
    return {"file": error.file, "problem": error.problem, "fix": error.fix, "too_large": isinstance(error, ImageTooLargeError)}


def _serve(request: dict[str, Any], limits: ImageLimits) -> dict[str, Any]:
    """The child's work: validate and describe the outcome as JSON-ready data."""
    try:
        if request["task"] == "image":
            read_image(request["path"])
            return {}
        return _register(request)
    except SiteValidationError as exc:
        return {"problems": [_problem(_memory_explained(problem, limits)) for problem in exc.problems]}
    except DataError as exc:
        return {"problems": [_problem(_memory_explained(exc, limits))], "single": True}
    except MemoryError:
        return {"memory": True}
    except ValueError as exc:
        return {"refused": "value", "message": str(exc)}


def _register(request: dict[str, Any]) -> dict[str, Any]:
    from dakr.store import Store, StoreError  # imports torch: only the registering child pays for it

    cases = [CaseFiles(case_id, Path(image), Path(label)) for case_id, image, label in request["cases"]]
    trusted_root = None if request["trusted_root"] is None else Path(request["trusted_root"])
    spec = SiteSpec(cases, request["site_labels"], trusted_root)
    try:
        Store.open(request["store"]).add_site(request["name"], spec, audit_fraction=request["audit_fraction"], seed=request["seed"])
    except StoreError as exc:
        return {"refused": "store", "message": str(exc)}
    except sqlite3.OperationalError as exc:
        return {"storage": "sqlite", "message": str(exc)}
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            return {"memory": True}
        return {"storage": "os", "errno": exc.errno, "message": exc.strerror or str(exc)}
    return {}


def _memory_explained(error: DataError, limits: ImageLimits) -> DataError:
    """A reader failure (its header was fine) as :class:`ImageTooLargeError` when the volume's
    voxels, held twice while reading (the reader's buffer and the image), do not fit in the
    memory budget: C readers report a failed allocation only as "cannot be read"."""
    if type(error) is not DataError or not error.problem.startswith("cannot be read"):
        return error
    try:
        reader = header_reader(Path(error.file), image_suffix(error.file))
        reader.ReadImageInformation()
    except (RuntimeError, DataError):
        return error
    needed = 2 * declared_bytes(reader)
    if needed <= limits.validation_memory_bytes:
        return error
    return ImageTooLargeError(
        error.file,
        f"reading it needs about {needed / 2**20:.0f} MB, more than the memory limit of {limits.describe_memory()}",
        "send a smaller volume, or raise the limit where the server runs",
    )


def _address_space_in_use() -> int | None:
    """Bytes of address space this process uses now (``None`` without Linux's ``/proc``)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _main(result_file: str, memory_bytes: str) -> None:
    request = json.loads(sys.stdin.buffer.read())
    if request["task"] == "register":
        import dakr.store  # noqa: F401  (map torch and the store before measuring the baseline)
    in_use = _address_space_in_use()
    if in_use is not None:
        import resource

        limit = in_use + int(memory_bytes)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = _serve(request, ImageLimits(validation_memory_bytes=int(memory_bytes)))
    Path(result_file).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    _main(*sys.argv[1:3])
