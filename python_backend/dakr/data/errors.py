"""Errors raised while reading and validating user data.

Every message names the file, the problem and what the user should do about it, so the
Slicer module and the CLI can show it as is.
"""

from __future__ import annotations

from os import PathLike


class DataError(ValueError):
    """One problem with one file: ``"<file>: <problem>. Fix: <fix>"``."""

    def __init__(self, file: str | PathLike[str], problem: str, fix: str) -> None:
        self.file = str(file)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.file}: {problem}. Fix: {fix}")


class SiteValidationError(ValueError):
    """A site was rejected; ``problems`` holds every problem found, not just the first."""

    def __init__(self, problems: list[DataError]) -> None:
        self.problems = list(problems)
        listing = "\n".join(f"- {problem}" for problem in self.problems)
        super().__init__(f"site rejected, {len(self.problems)} problem(s); nothing was stored:\n{listing}")


class ImageTooLargeError(DataError):
    """A volume is larger than the configured limits (voxels, bytes, memory to read it)."""


class ImageGridError(DataError):
    """A volume's spacing or its grid resampled for the model is outside the prediction limits."""
