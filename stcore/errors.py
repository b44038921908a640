"""Errors that name the file (or dataset) and the problem."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Raised when an input file is unusable; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class ChecksumError(DataError):
    """A file's sha256 differs from the registry."""


class UnknownDatasetError(KeyError):
    """A dataset name that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])
