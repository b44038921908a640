"""Datasets: registry and mirror, readers to AnnData, cached loading, image patches."""

from . import splits
from .load import load, processed_dir, sections
from .patches import PatchStore, extract_patches
from .registry import datasets, fetch, get
from .summary import section_table
from .visium import read_visium

__all__ = ["PatchStore", "splits", "datasets", "extract_patches", "fetch", "get", "load", "processed_dir",
           "read_visium", "section_table", "sections"]
