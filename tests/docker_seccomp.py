"""Run a command as Docker's default seccomp profile confines a container without CAP_SYS_ADMIN:
unshare, mount, umount2, setns, pivot_root, process_vm_readv and process_vm_writev fail with
EPERM, clone with a CLONE_NEW* flag too, and clone3 with ENOSYS (so that libc falls back to
clone). Used with `capsh --drop=cap_sys_admin` to stand for a container's root on a host where
that needs no container engine; podman_profile() gives the same rules to a real container.

    python3 tests/docker_seccomp.py ARGV...
"""

import ctypes
import errno
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
# x86_64 numbers: the only architecture this host (and this stand-in) has
# process_vm_readv/writev: Debian's docker.io 20.10 refuses them too (EPERM, even on oneself; measured)
REFUSED = {"unshare": 272, "mount": 165, "umount2": 166, "setns": 308, "pivot_root": 155,
           "process_vm_readv": 310, "process_vm_writev": 311}
CLONE, CLONE3 = 56, 435
CLONE_NEW_FLAGS = (0x00020000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x02000000)
CLONE_NEW = sum(CLONE_NEW_FLAGS)

BPF_LD_W_ABS, BPF_JEQ_K, BPF_JSET_K, BPF_RET_K = 0x20, 0x15, 0x45, 0x06


def insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program() -> bytes:
    """Classic BPF over struct seccomp_data (nr at 0, arch at 4, args[0]'s low word at 16); a jump
    of K from instruction P lands on P + 1 + K."""
    n = len(REFUSED)
    eperm_at = 11 + n
    return b"".join([
        insn(BPF_LD_W_ABS, 4),
        insn(BPF_JEQ_K, AUDIT_ARCH_X86_64, jt=1),
        insn(BPF_RET_K, SECCOMP_RET_ALLOW),
        insn(BPF_LD_W_ABS, 0),
        *(insn(BPF_JEQ_K, nr, jt=eperm_at - (4 + i) - 1) for i, nr in enumerate(REFUSED.values())),
        insn(BPF_JEQ_K, CLONE, jt=3),  # 4 + n: to the flag test at 8 + n
        insn(BPF_JEQ_K, CLONE3, jt=1),  # 5 + n: to ENOSYS at 7 + n
        insn(BPF_RET_K, SECCOMP_RET_ALLOW),
        insn(BPF_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS),
        insn(BPF_LD_W_ABS, 16),
        insn(BPF_JSET_K, CLONE_NEW, jt=1),
        insn(BPF_RET_K, SECCOMP_RET_ALLOW),
        insn(BPF_RET_K, SECCOMP_RET_ERRNO | errno.EPERM),  # eperm_at
    ])


def podman_profile() -> dict:
    """The same refusals as a seccomp profile for podman (whose own default allows namespaces)."""
    rules = [{"names": list(REFUSED), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
             {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]
    rules += [{"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
               "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}
              for flag in CLONE_NEW_FLAGS]
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def install() -> None:
    if platform.machine() != "x86_64":
        raise SystemExit("docker_seccomp.py knows only x86_64's system call numbers")
    code = program()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    buf = ctypes.create_string_buffer(code, len(code))
    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_char_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        raise SystemExit(f"cannot install the seccomp filter: {os.strerror(ctypes.get_errno())}")


if __name__ == "__main__":
    install()
    os.execvp(sys.argv[1], sys.argv[1:])
