"""Shared arrays (ML-Ensemble's domain): `ArrayJob` runs many tasks over the same large arrays.

A domain package: imports the core (`_shm`, `_streams`, `_errors`), never another domain.
"""

from __future__ import annotations

from ._job import ArrayJob
from ._namespace import Arrays

__all__ = ["ArrayJob", "Arrays"]
