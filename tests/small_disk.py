"""`python -m tests.small_disk <size> <folder> <trainer.py's arguments>`: trainer.py run on a real small disk, what
`unshare --mount --map-root-user sh -c "mount -t tmpfs -o size=<size> tmpfs <folder> && python trainer.py ..."`
does, but started as a forked child (tests/forked_ranks.run_script) instead of a fresh interpreter. This process
enters a private mount namespace (and, where it is not root, a user namespace in which it is root), mounts a tmpfs
of <size> on <folder>, runs trainer.py as __main__ in a child (the trainer leaves through os._exit), then prints
`rc=<its exit code>`, the folder's entries and, after `--log--`, its logs/rank0.log: the mount goes with the
namespace when this process exits."""
import ctypes
import os
import runpy
import sys
from pathlib import Path

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000  # <linux/sched.h>
MS_REC, MS_PRIVATE = 0x4000, 0x40000  # <linux/mount.h>
LIBC = ctypes.CDLL(None, use_errno=True)


def checked(result: int) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def mount_tmpfs(size: str, folder: Path) -> None:
    uid, gid, root = os.getuid(), os.getgid(), os.geteuid() == 0
    checked(LIBC.unshare(CLONE_NEWNS | (0 if root else CLONE_NEWUSER)))
    if not root:  # --map-root-user
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    checked(LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))  # nothing propagates to the host's mounts
    checked(LIBC.mount(b"tmpfs", str(folder).encode(), b"tmpfs", 0, f"size={size}".encode()))


def main() -> None:
    size, folder, *args = sys.argv[1:]
    mount_tmpfs(size, Path(folder))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        sys.argv = ["trainer.py", *args]
        try:
            runpy.run_path("trainer.py", run_name="__main__")
        except SystemExit as stop:
            os._exit(stop.code if isinstance(stop.code, int) else 1)
        os._exit(0)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    log = Path(folder) / "logs" / "rank0.log"
    print(f"rc={code}", *sorted(os.listdir(folder)), "--log--", log.read_text() if log.is_file() else "", sep="\n")


if __name__ == "__main__":
    main()
