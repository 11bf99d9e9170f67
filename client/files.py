"""Output files that appear whole or not at all: written under a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write; on success it is renamed to `path`, on failure removed.

    A reader polling for `path` (a player, a script) never sees a half-written file.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield temp
        os.replace(temp, path)
    except OSError as error:  # name the file the user asked for, not the temporary one
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes) -> None:
    with atomic_output(path) as temp:
        temp.write_bytes(data)
