"""The data errors a user can fix: a folder, a file, a layout, a missing package — each one line that names it.

`launch.py` prints these (and training's `UserError`) as one `error:` line with exit code 2. A plain ValueError
from this package is a broken invariant of the API (a caller's bug), and keeps its traceback.
"""


class DataError(ValueError):
    """A problem with the user's data or its settings, worded as one line that names the folder, file or key."""


class DaliMissingError(DataError, ImportError):
    """NVIDIA DALI is not installed (or does not import): what to install."""
