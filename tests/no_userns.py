"""Run a command as Docker's default seccomp profile would let it run without CAP_SYS_ADMIN:
no new namespace of any kind (unshare, clone with a CLONE_NEW* flag, clone3), no setns, no mount.

    python3 tests/no_userns.py COMMAND [ARG...]

The filter is inherited by everything COMMAND starts, so a build under it sees what a build
in a `docker run` job sees (unshare and clone answer EPERM, clone3 ENOSYS so that glibc falls
back to clone). x86_64 only, as the machines that run the e2e tests.
"""

import ctypes
import errno
import os
import struct
import sys

SECCOMP_SET_MODE_FILTER = 1
PR_SET_NO_NEW_PRIVS = 38
AUDIT_ARCH_X86_64 = 0xC000003E
SYS_SECCOMP = 317
CLONE, UNSHARE, SETNS, MOUNT, CLONE3 = 56, 272, 308, 165, 435
CLONE_NEW_ANY = 0x7E020080  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
RET_ALLOW, RET_ERRNO, RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000
LD_ABS, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
NR, ARCH, ARG0_LOW = 0, 4, 16


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program() -> bytes:
    """Classic BPF: the refusals above; everything else runs."""
    deny, nosys = _insn(RET, RET_ERRNO | errno.EPERM), _insn(RET, RET_ERRNO | errno.ENOSYS)
    return b"".join([
        _insn(LD_ABS, ARCH), _insn(JEQ, AUDIT_ARCH_X86_64, jt=1), _insn(RET, RET_KILL),
        _insn(LD_ABS, NR),
        _insn(JEQ, UNSHARE, jt=7), _insn(JEQ, SETNS, jt=6), _insn(JEQ, MOUNT, jt=5), _insn(JEQ, CLONE3, jt=5),
        _insn(JEQ, CLONE, jf=2), _insn(LD_ABS, ARG0_LOW), _insn(JSET, CLONE_NEW_ANY, jt=1),
        _insn(RET, RET_ALLOW), deny, nosys,
    ])


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def main(argv: list[str]) -> None:
    code = program()
    buffer = ctypes.create_string_buffer(code, len(code))
    libc = ctypes.CDLL(None, use_errno=True)
    prog = _Prog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog)) != 0:
        raise SystemExit(f"no_userns: cannot install the filter: {os.strerror(ctypes.get_errno())}")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
