"""The package's error types, at the bottom of every layer so that any stage can name them.

:class:`DataError` is raised where an input is found unusable: by the readers in :mod:`monai_pipeline.io`
(a file that cannot be read as what it claims to be) and by :mod:`monai_pipeline.data.validate` (every other
input check). Stages above ``data`` call those checks and do not raise it themselves. The CLI turns it into
one ``error:`` line and exit status 2.
"""

from __future__ import annotations

__all__ = ["DataError", "DATA_EXIT_CODE"]

DATA_EXIT_CODE = 2


class DataError(ValueError):
    """An input file or dataset description is unusable. The message names the file and the fault."""

    exit_code = DATA_EXIT_CODE
