"""`python -m tests.unprivileged <uid> <gid> <trainer.py's arguments>`: trainer.py run as __main__ by an unprivileged
user, what `setpriv --reuid=<uid> --regid=<gid> --clear-groups --inh-caps=+dac_read_search
--ambient-caps=+dac_read_search -- python trainer.py ...` does, but started by root as a forked child
(tests/forked_ranks.run_script) instead of a fresh interpreter: this process takes that user's uid and gid, no
supplementary groups, and keeps only the capability to read and search (root's home holds the Python
installation), not to write where the user may not."""
import ctypes
import os
import runpy
import sys

PR_SET_KEEPCAPS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 8, 47, 2  # <linux/prctl.h>
CAP_DAC_READ_SEARCH = 2  # <linux/capability.h>
LINUX_CAPABILITY_VERSION_3 = 0x20080522
LIBC = ctypes.CDLL(None, use_errno=True)


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def checked(result: int) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def become(uid: int, gid: int) -> None:
    checked(LIBC.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))  # the permitted set survives the uid change
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    kept = 1 << CAP_DAC_READ_SEARCH
    data = (CapData * 2)((kept, kept, kept), (0, 0, 0))  # every other capability dropped
    checked(LIBC.capset(ctypes.byref(CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), data))
    checked(LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0))
    checked(LIBC.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0))


if __name__ == "__main__":
    uid, gid, *args = sys.argv[1:]
    become(int(uid), int(gid))
    sys.argv = ["trainer.py", *args]
    runpy.run_path("trainer.py", run_name="__main__")
