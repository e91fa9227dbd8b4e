"""Where a measurement writes: its JSON lines in OUT_DIR, opened before any work."""

import os

from launch import entry


def open_jsonl(out_dir, name):
    """OUT_DIR/`name` opened to append (runs add to earlier ones), OUT_DIR made if needed.

    Opened before the first cell or race, so that a folder that cannot hold it (a file, a
    read-only or full disk) is a user's mistake found at once, not minutes of measurement lost
    at the end.

    Raises:
      entry.UserError: naming --out_dir and the cause.
    """
    try:
        os.makedirs(out_dir, exist_ok=True)
        return open(os.path.join(out_dir, name), "a")
    except OSError as error:
        raise entry.UserError(f"--out_dir={out_dir}: {entry.path_error(error)}") from error
