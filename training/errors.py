"""The errors a user can fix, and only those, end a command with one line and exit code 2.

`UserError` is a problem with the user's input — a config value, a model name or checkpoint file, a run folder,
a resume — worded as one line that names the key, file or folder (`ConfigError` and `ModelError` are its kinds;
`pipeline.DataError` is the data's). Anything else that escapes a command is our bug, and `launch.py` lets its
traceback show instead of dressing it as the user's mistake.
"""

from unixkd.pipeline.errors import DataError


class UserError(ValueError):
    """A problem with the user's input, worded as one line that names it."""


USER_ERRORS = (UserError, DataError)  # what launch.py reports as one line, exit 2
