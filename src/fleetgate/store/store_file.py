"""The SQLite file a store opened, and the check that it is still the file at its path.

SQLite keeps writing to an open database that was deleted (or renamed over) on disk: in WAL
mode every append "succeeds" into an inode nobody can open again, and is lost when the store
closes — the log, the fence and the summary rows with it. A store therefore remembers the
file it opened (device and inode, after its migrations) and checks, before each write
transaction and each append batch, that the path still names that file. One ``stat`` per
write: its metadata is in the kernel's cache, microseconds, no I/O wait on a local disk.

A deleted or replaced file is a ``StoreError`` that is not retryable: nothing was written,
and only a restart (against the file that is there now, or a restored backup) can go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleetgate.errors import StoreError


@dataclass(frozen=True, slots=True)
class StoreFile:
    path: Path
    display: str
    ident: tuple[int, int]  # st_dev, st_ino

    @classmethod
    def capture(cls, path: str, display: str) -> StoreFile:
        try:
            st = Path(path).stat()
        except OSError as exc:
            raise StoreError(
                f"cannot open store {display}: {path}: {exc.strerror or type(exc).__name__}",
                retryable=not isinstance(exc, FileNotFoundError),
            ) from None
        return cls(Path(path), display, (st.st_dev, st.st_ino))

    def check(self) -> None:
        """Raise ``StoreError`` unless ``path`` still names the file this store opened."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise self._gone("was deleted") from None
        except OSError as exc:  # EACCES, EIO, ESTALE …: may pass; nothing was written
            raise StoreError(
                f"store {self.display}: cannot check the database file "
                f"({exc.strerror or type(exc).__name__}); nothing was written",
                retryable=True,
            ) from None
        if (st.st_dev, st.st_ino) != self.ident:
            raise self._gone("was replaced by another file")

    def _gone(self, what: str) -> StoreError:
        return StoreError(
            f"store {self.display}: the database file {what} while the store was open; "
            "nothing was written (restart against the file that is there now, or restore it)",
            retryable=False,
        )
