"""The one exception type users see.

Anything the user can fix (a bad path, a malformed data line, a mismatched adapter) raises
:class:`UnlearnableError` with a message that says what to fix. The CLI prints it as one line and exits
with status 2; the Python API lets it propagate.
"""


class UnlearnableError(Exception):
    """A problem with the user's input or environment, described in one actionable line."""

    exit_code = 2
