"""The package's error types, at the bottom of every layer so that any stage can name them.

:class:`DataError` is raised where an input is found unusable: by the readers in :mod:`monai_pipeline.io`
(a file that cannot be read as what it claims to be) and by :mod:`monai_pipeline.data.validate` (every other
input check). Stages above ``data`` call those checks and do not raise it themselves. The CLI turns it into
one ``error:`` line and exit status 2; under ``python -m monai.bundle`` it is the same line
(:func:`report_data_errors_in_bundle_cli`).
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = ["DataError", "DATA_EXIT_CODE", "TRACEBACK_ENV", "report_data_errors_in_bundle_cli"]

DATA_EXIT_CODE = 2
TRACEBACK_ENV = "MONAI_PIPELINE_TRACEBACK"


class DataError(ValueError):
    """An input file or dataset description is unusable. The message names the file and the fault."""

    exit_code = DATA_EXIT_CODE


def _data_error_in(exc: BaseException | None) -> DataError | None:
    """The DataError that ``exc`` is or was raised from (MONAI's config parser wraps it in RuntimeErrors)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DataError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def report_data_errors_in_bundle_cli() -> None:
    """Under ``python -m monai.bundle``, print an uncaught :class:`DataError` as one ``error:`` line, as the
    project's CLI does, instead of MONAI's 50-line traceback of config wrappers around it; the exit status stays
    Python's 1. Any other exception keeps its traceback, and so does every exception when the environment sets
    ``MONAI_PIPELINE_TRACEBACK=1``. Does nothing in any other program (the Python API raises as usual)."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) != "monai.bundle.__main__":
        return
    if os.environ.get(TRACEBACK_ENV) or getattr(sys.excepthook, "_monai_pipeline", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        err = _data_error_in(exc)
        if err is None:
            previous(exc_type, exc, tb)
            return
        sys.stderr.write(f"error: {err}\n")

    hook._monai_pipeline = True  # type: ignore[attr-defined]
    sys.excepthook = hook
