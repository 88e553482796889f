"""`Closeable`: the context-manager half of an explicit lifecycle, written once.

Every room that holds a resource (a camera, a decoder, GPIO pins, a database file)
has an idempotent `close()`; this mixin makes ``with Thing(...) as thing:`` call it.
Objects whose `__enter__` must also start something (a thread, a connection) write
their own.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Closeable"]


class Closeable:
    """Mixin: ``with`` returns the object and calls its `close()` on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
