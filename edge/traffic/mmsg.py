"""Batched UDP I/O for the hot loop: recvmmsg(2) and sendmmsg(2) through ctypes (Linux, glibc).

Python's socket module does one system call per datagram each way, and on this kind of machine
those calls cost more than answering from the wire cache. One recvmmsg takes every datagram
that is waiting (up to `BATCH`, blocking only for the first), one sendmmsg sends every reply.
All buffers and headers are allocated once; per datagram the loop only indexes memoryviews
over them (a ctypes field access per datagram would cost nearly what the call saves).

Layout (glibc, LP64): iovec {base, len}; msghdr {name, namelen, iov, iovlen, control,
controllen, flags}; mmsghdr {msghdr, len}. `available()` is False elsewhere, and the caller
falls back to recvfrom/sendto.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import sys

BATCH = 64
SLOT_BYTES = 65536  # a whole datagram per slot: nothing is ever cut
MSG_WAITFORONE = 0x10000
SOCKADDR_BYTES = 28  # sockaddr_in6, the larger of the two


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _ = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    for fn in (libc.recvmmsg, libc.sendmmsg):
        fn.restype = ctypes.c_int
    libc.recvmmsg.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p,
    ]  # fmt: skip
    libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    return libc


_LIBC = _libc()


def available() -> bool:
    return _LIBC is not None


class Batch:
    """Receive and send buffers for one socket; `recv` then `send` alternately, one thread."""

    def __init__(self, sock: socket.socket, batch: int = BATCH) -> None:
        assert _LIBC is not None, "mmsg.available() is False"
        self.sock = sock
        self.batch = batch
        self.family = sock.family
        self.namelen = 16 if sock.family == socket.AF_INET else SOCKADDR_BYTES
        # Anonymous mappings, not ctypes buffers: those are zero-filled up front, 8 MiB of
        # resident memory per socket; a mapping's pages only become resident when a datagram
        # lands in them (a page or two per slot for DNS-sized messages).
        self._maps = [mmap.mmap(-1, batch * SLOT_BYTES) for _ in range(2)]
        self._rdata = (ctypes.c_char * (batch * SLOT_BYTES)).from_buffer(self._maps[0])
        self._sdata = (ctypes.c_char * (batch * SLOT_BYTES)).from_buffer(self._maps[1])
        self._names = ctypes.create_string_buffer(batch * SOCKADDR_BYTES)
        self._riov = (_Iovec * batch)()
        self._siov = (_Iovec * batch)()
        self._rmsg = (_Mmsghdr * batch)()
        self._smsg = (_Mmsghdr * batch)()
        base_r, base_s = ctypes.addressof(self._rdata), ctypes.addressof(self._sdata)
        base_n = ctypes.addressof(self._names)
        for i in range(batch):
            self._riov[i].iov_base, self._riov[i].iov_len = base_r + i * SLOT_BYTES, SLOT_BYTES
            self._siov[i].iov_base = base_s + i * SLOT_BYTES
            for msg, iov in ((self._rmsg[i], self._riov), (self._smsg[i], self._siov)):
                h = msg.msg_hdr
                h.msg_name, h.msg_namelen = base_n + i * SOCKADDR_BYTES, self.namelen
                h.msg_iov, h.msg_iovlen = ctypes.addressof(iov) + i * ctypes.sizeof(_Iovec), 1
        stride = ctypes.sizeof(_Mmsghdr)
        assert stride % 4 == 0 and ctypes.sizeof(_Iovec) == 16
        self._stride = stride // 4
        self._len_at = _Mmsghdr.msg_len.offset // 4
        # Byte views: datagrams, addresses; integer views: received lengths, send lengths.
        self.rview = memoryview(self._rdata).cast("B")
        self.sview = memoryview(self._sdata).cast("B")
        self.names = memoryview(self._names).cast("B")
        self._rlens = memoryview(self._rmsg).cast("B").cast("I")
        self._slens = memoryview(self._siov).cast("B").cast("Q")

    def recv(self) -> int:
        """Wait for datagrams; their count (0: interrupted, look at the stop flag)."""
        assert _LIBC is not None
        n: int = _LIBC.recvmmsg(
            self.sock.fileno(), ctypes.addressof(self._rmsg), self.batch, MSG_WAITFORONE, None
        )
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EINTR, errno.EAGAIN):
                return 0
            raise OSError(err, os.strerror(err))
        return n

    def datagram(self, i: int) -> bytes:
        length = self._rlens[i * self._stride + self._len_at]
        start = i * SLOT_BYTES
        return self.rview[start : start + length].tobytes()

    def client(self, i: int) -> str:
        """The sender of datagram `i` as text, as socket.recvfrom reports it."""
        start = i * SOCKADDR_BYTES
        if self.family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, self.names[start + 4 : start + 8])
        return socket.inet_ntop(socket.AF_INET6, self.names[start + 8 : start + 24])

    def stage(self, i: int, reply: bytes) -> None:
        """Put the reply to datagram `i` in send slot `i` (addressed to its sender)."""
        start = i * SLOT_BYTES
        self.sview[start : start + len(reply)] = reply
        self._slens[2 * i + 1] = len(reply)

    def send(self, start: int, stop: int) -> None:
        """Send slots start..stop-1, all staged."""
        assert _LIBC is not None
        sent = start
        while sent < stop:
            n: int = _LIBC.sendmmsg(
                self.sock.fileno(),
                ctypes.addressof(self._smsg) + sent * ctypes.sizeof(_Mmsghdr),
                stop - sent,
                0,
            )
            if n <= 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                sent += 1  # skip the one that failed (unreachable, no buffer): lost like UDP
                continue
            sent += n
