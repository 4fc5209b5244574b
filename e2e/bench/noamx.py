"""Refuses Intel AMX to this process and whatever it starts.

llama.cpp's native build on a CPU with AMX puts its weights in an AMX
buffer; on the Xeon the README's figures come from, its AMX matrix multiply
segfaults on the first prompt of more than a few tokens (gdb:
`ggml_backend_amx_mul_mat`). Linux hands a process the AMX tile state only
when it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); a seccomp filter that
answers that request with EPERM makes ggml's `ggml_amx_init` fail, so the
same binary runs with everything else it has (its repacked AVX-512 and VNNI
kernels). Nothing but that one request is affected.

Use: `noamx.refuse()` before llama.cpp loads, or `noamx.command(cmd)` (the
same as `python3 noamx.py PROGRAM ARGS...`) to run a program under the
filter. The benches try llama.cpp as built first and use this only when it
dies by a signal on a CPU that `has_amx()`.
"""
import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
AUDIT_ARCH_X86_64 = 0xC000003E
NR_ARCH_PRCTL = 158
ARCH_REQ_XCOMP_PERM = 0x1023
# Classic BPF: load a word of seccomp_data, compare, return.
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06


def has_amx():
    """Whether this CPU has AMX-INT8 (the path that crashes)."""
    return "amx_int8" in open("/proc/cpuinfo").read()


def command(cmd):
    """`cmd` run under the filter."""
    return [sys.executable, os.path.abspath(__file__)] + list(cmd)


def refuse():
    """Installs the filter for this process and its children (irrevocably)."""
    if os.uname().machine != "x86_64":
        return
    prog = [
        (LD_W_ABS, 0, 0, 4),                    # arch
        (JEQ_K, 0, 5, AUDIT_ARCH_X86_64),
        (LD_W_ABS, 0, 0, 0),                    # syscall number
        (JEQ_K, 0, 3, NR_ARCH_PRCTL),
        (LD_W_ABS, 0, 0, 16),                   # low half of its first argument
        (JEQ_K, 0, 1, ARCH_REQ_XCOMP_PERM),
        (RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
        (RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "installing the seccomp filter failed")


if __name__ == "__main__":
    refuse()
    os.execvp(sys.argv[1], sys.argv[1:])
