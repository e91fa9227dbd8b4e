"""How every entry point starts and fails: the project's one error path.

    from launch import entry
    if __name__ == "__main__":
        entry.run(main)                          # no positional arguments
        entry.run(main, positional="FILE...")    # one or more

A user's mistake (a bad or missing flag, a stray argument, a records folder that does not fit)
is one line on stderr, `error: ...`, and exit code 2, before any work. A fault during the work
(a full disk, damaged data) is one such line too, naming the path, with exit code 1. Never a
traceback for either. absl alone would not do this: a bad enum value, a failed validator or an
unknown flag print `FATAL Flags parsing error` and exit 1, and `app.UsageError` prints the whole
help. This module sits in launch/ (beside host.py) because input/'s entry points use it as well
as trainer/'s, and input/ does not depend on trainer/.
"""

import errno
import os
import re
import sys
import tempfile

from absl import app
from absl import flags

USAGE_EXIT_CODE = 2  # a user's mistake, found before any work
FAULT_EXIT_CODE = 1  # something failed during the work

# OS errors that are the machine's state, not a bug: reported as one line naming the path.
_PATH_ERRORS = {errno.ENOSPC, errno.EROFS, errno.ENOTDIR, errno.EACCES, errno.EPERM,
                errno.ENOENT, errno.EISDIR, errno.EDQUOT, errno.EEXIST}


class Failure(Exception):
    """A job that cannot go on; the entry point prints it as `error: ...` and exits with
    `exit_code`."""
    exit_code = FAULT_EXIT_CODE


class UserError(Failure):
    """A user's mistake found before any work (flags, paths, records): exit code 2."""
    exit_code = USAGE_EXIT_CODE


def path_error(error, doing=None):
    """One line of an OSError: the path and the cause ("no space left on device")."""
    cause = (error.strerror or str(error)).lower()
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{cause}" + (f" ({doing})" if doing else "")


def is_path_error(error):
    return isinstance(error, OSError) and error.errno in _PATH_ERRORS


def say_error(message):
    print(f"error: {message}", file=sys.stderr, flush=True)


def run(main, positional=None):
    """absl's app.run(main) with the one error path.

    Args:
      main: main(argv) of the entry point; argv[1:] are its positional arguments.
      positional: None when the entry point takes none; else their names as usage shows them,
        e.g. "RECORDS_DIR" (exactly one) or "FILE..." (one or more).
    """
    app.run(_guarded(main), flags_parser=lambda argv: _parse(argv, positional))


def _parse(argv, positional):
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as error:
        _exit_usage(error)
    extra = rest[1:]
    if positional is None and extra:
        _exit_usage(f"unexpected argument(s): {' '.join(extra)} (this command takes flags "
                    f"only; --help lists them)")
    if positional is not None:
        names = positional.split()
        open_ended = names[-1].endswith("...")
        if len(extra) < len(names) or (not open_ended and len(extra) > len(names)):
            _exit_usage(f"expected {positional}, got {len(extra)} argument(s)"
                        + (f": {' '.join(extra)}" if extra else ""))
    return rest


def _exit_usage(message):
    line = str(message).strip().splitlines()[0] if str(message).strip() else str(message)
    # absl prefixes a validator's message with the flag's Python value ("flag --folds=['0',
    # '5']: "); our validators name the flag themselves, so the prefix only repeats it.
    line = re.sub(r"^flag --(\w+)=.*?: (?=--\1\b)", "", line)
    say_error(line)
    sys.exit(USAGE_EXIT_CODE)


def _guarded(main):
    def guarded(argv):
        try:
            return main(argv)
        except Failure as error:
            say_error(error)
            return error.exit_code
        except OSError as error:
            if not is_path_error(error):
                raise
            say_error(path_error(error))
            return FAULT_EXIT_CODE
    return guarded


def check_writable_dir(path, flag):
    """Refuses, before any work, an output folder that cannot be written: a file, a folder
    under a file, a read-only file system (a write probe: root ignores permission bits, not
    a read-only mount)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{flag}={path}: {existing}: not a directory")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".write-check-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise UserError(f"{flag}={path}: {(error.strerror or str(error)).lower()}") from error
