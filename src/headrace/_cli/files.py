"""``headrace files``: a file job from user code. The logic lives in the files domain
(`headrace._files._command`); this module only names it for the command line."""

from __future__ import annotations

from .._files._command import add_arguments, main

HELP = "run a file job (headrace.FileJob) from your code over many files"
DESCRIPTION = (
    "Run a FileJob defined in your code over input files (globs and @list.txt expand), "
    "writing each output atomically into --outdir, with live progress and a summary; "
    "--resume skips outputs that are up to date. Exit code 1 if any file failed."
)
EXAMPLE = "headrace files mypipeline:job 'raw/*.npy' --outdir out --set gain=1.5 --resume"

__all__ = ["DESCRIPTION", "EXAMPLE", "HELP", "add_arguments", "main"]
