"""Advisory locks on open files, for "one process uses this directory" checks.

Imported by the push agent too: standard library only.
"""

from __future__ import annotations

import sys


def try_lock(fd: int, *, shared: bool = False) -> bool:
    """Lock the open file ``fd`` without waiting; ``False`` if another holder has it.

    The lock lasts until ``fd`` is closed (or the process ends). Windows has no
    shared locks: there a shared lock is not taken and always succeeds.
    """
    if sys.platform == "win32":
        if shared:
            return True
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
