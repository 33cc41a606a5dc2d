"""The one error type amr raises for problems a user can act on.

The CLI turns it into a one-line message on stderr and a non-zero exit code;
anything else escaping is a bug and keeps its traceback.
"""


class AmrError(Exception):
    """A user-facing failure. The message names the file (and line) at fault."""


class Interrupted(AmrError):
    """A run stopped by Ctrl-C; the message says what it kept. The CLI exits 130."""
