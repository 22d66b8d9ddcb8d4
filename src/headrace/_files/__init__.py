"""File jobs (BigMultiPipe's domain): input files to output files on parallel workers.

Owns nothing itself: `FileJob`, `FileResult` and `FileStep` live in `_job` and `_worker`; the
command line in `_command`. A domain package: imports the core, never another domain.
"""

from __future__ import annotations

from ._job import FileJob, FileResult
from ._worker import FileStep

__all__ = ["FileJob", "FileResult", "FileStep"]
