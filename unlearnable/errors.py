"""The one exception type users see.

Anything the user can fix (a bad path, a malformed data line, a mismatched adapter) raises
:class:`UnlearnableError` with a message that says what to fix. The CLI prints it as one line and exits
with status 2; the Python API lets it propagate.
"""


class UnlearnableError(Exception):
    """A problem with the user's input or environment, described in one actionable line."""

    exit_code = 2


_WRITE_FIXES = {
    "ENOSPC": ("no space left on the device", "free some space or choose another --out"),
    "EDQUOT": ("disk quota exceeded", "free some space or choose another --out"),
    "EACCES": ("permission denied", "choose a --out you can write to"),
    "EPERM": ("operation not permitted", "choose a --out you can write to"),
    "EROFS": ("read-only file system", "choose a --out on a writable disk"),
}


def write_error(exc: BaseException, path) -> UnlearnableError | None:
    """The one-line error for a failed write of ``path`` (disk full, no permission, read-only disk), or None when
    ``exc`` is none of those. Libraries that write through their own code (safetensors) report the OS error only
    in their message, so that is read too."""
    import errno
    import os

    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    if not name:
        text = str(exc)
        for candidate in _WRITE_FIXES:
            number = getattr(errno, candidate, None)
            if number is not None and (f"os error {number})" in text or os.strerror(number) in text):
                name = candidate
                break
    if name not in _WRITE_FIXES:
        return None
    what, fix = _WRITE_FIXES[name]
    where = getattr(exc, "filename", None) or path
    return UnlearnableError(f"could not write {where}: {what}; {fix}")
