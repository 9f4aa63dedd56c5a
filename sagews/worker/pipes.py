"""Pipe ends read and written on the event loop (``add_reader``/``add_writer``); the descriptor stays ours.

Not ``loop.connect_read_pipe``/``connect_write_pipe``: under uvloop (the worker's loop when it is
installed) their transport closes the pipe's descriptor twice, libuv's ``uv_close`` and then the
attached file object's ``close()`` (MagicStack/uvloop#763). The second close gets EBADF, unless
another thread was handed the same number in between: then that thread's descriptor is closed under
it. That is how a save's ``os.scandir`` of its bundle directory (``Worker._store_bundle``, in
``asyncio.to_thread``) failed with EBADF while helper pipes were being closed. Here each descriptor
is closed once, by its owner, on either loop.
"""

from __future__ import annotations

import asyncio
import os

from sagews.worker.protocol import CHUNK


class PipeReader:
    """Feeds ``self.reader`` (an ``asyncio.StreamReader``) from the read end ``fd``, which belongs to
    this object from the call on: ``close()`` takes it off the loop and closes it."""

    def __init__(self, fd: int, limit: int = 1 << 16) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = asyncio.StreamReader(limit=limit)
        self.fd = fd
        self.reading = False
        os.set_blocking(fd, False)
        self.loop.add_reader(fd, self._on_readable)
        self.reading = True

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._stop()
            self.reader.set_exception(exc)
            return
        if data:
            self.reader.feed_data(data)
        else:
            self._stop()
            self.reader.feed_eof()

    def _stop(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            self._stop()
            os.close(self.fd)
            self.fd = -1


async def write_all(fd: int, data: bytes) -> bool:
    """Write ``data`` to the write end ``fd`` (the caller's, not closed here) without blocking the loop.
    False if the reader went away first (EPIPE): its missing answer is the caller's error to report."""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            writable: asyncio.Future[None] = loop.create_future()
            loop.add_writer(fd, _wake, writable)
            try:
                await writable
            finally:
                loop.remove_writer(fd)
        except BrokenPipeError:
            return False
    return True


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
