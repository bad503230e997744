"""The one exception type for mistakes a user can make.

Every error that a user can cause (unknown model, method or dataset, a teacher checkpoint
that does not fit, a bad hyper-parameter, an unwritable workdir) is raised as a
:class:`KdjaxError` carrying one line that says what was wrong and what would be right.
The command-line entry points print that line and exit with status 2.
"""


class KdjaxError(Exception):
  """A user error; ``str(error)`` is the one line shown to the user."""
