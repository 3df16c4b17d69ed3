"""Where a run directory lives: a local (or NFS) path, or a URI of an object store or of any filesystem
pyarrow or fsspec knows, behind one small interface (read, write, list, copy).

``s3://``, ``gs://``/``gcs://``, ``hdfs://``, ``abfs://`` use pyarrow's own filesystems; any other scheme
goes through fsspec (``pyarrow.fs.PyFileSystem(FSSpecHandler(...))``). Credentials and endpoints come
from the usual environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL_S3``,
``GOOGLE_APPLICATION_CREDENTIALS``, ...): none is ever passed explicitly, so none is pickled into Ray's
state (``tuner.pkl``) or a trial's arguments.

Writes: on a local filesystem written to a temporary sibling and renamed (``bnsweep.base.atomic``); on
an object store one PUT per object, which the store makes visible whole or not at all (a multipart
upload too, at its completion): there is no rename there, and none is needed.

>>> loc = parse_location("/tmp/runs/x")
>>> loc.local, loc.uri, loc.join("trials", "t1")
(True, '/tmp/runs/x', '/tmp/runs/x/trials/t1')
>>> parse_location("s3:") # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
LocationError: s3:: ...
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnsweep.base.atomic import atomic_write_bytes

_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$")
_PYARROW_SCHEMES = {"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}
ALLOWED = "a local or NFS path, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, or a URI of any fsspec filesystem"


class LocationError(ValueError):
    """A run-directory location that cannot be used: the message names it, what was received and what is allowed."""


@dataclass(frozen=True)
class Location:
    """A run directory's place: ``fs`` (a ``pyarrow.fs.FileSystem``) and ``path`` inside it.

    ``uri`` is what users see and type (an absolute local path, or ``scheme://bucket/prefix``)."""

    uri: str
    fs: Any
    path: str
    local: bool

    @property
    def scheme(self) -> str:
        return "file" if self.local else self.uri.split("://", 1)[0]

    def join(self, *parts: str) -> str:
        """The path of ``parts`` (relative, '/'-separated) inside ``fs``."""
        return posixpath.join(self.path, *[p.strip("/") for p in parts if p])

    # ---------------------------------------------------------------- reading
    def read_bytes(self, rel: str) -> bytes | None:
        """The object/file ``rel``, or None where it does not exist."""
        if self.local:
            try:
                return Path(self.join(rel)).read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        try:
            with self.fs.open_input_stream(self.join(rel)) as f:
                return bytes(f.read())
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return bool(self.fs.get_file_info(self.join(rel)).type != pafs.FileType.NotFound)

    def list_files(self, rel: str = "") -> list[tuple[str, int]]:
        """Every file under ``rel`` as (path relative to the run directory, size), sorted."""
        import pyarrow.fs as pafs

        base = self.join(rel) if rel else self.path
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return []
        root = self.path.rstrip("/") + "/"
        out = [(i.path[len(root):] if i.path.startswith(root) else i.path, int(i.size or 0))
               for i in infos if i.type == pafs.FileType.File]
        return sorted(out)

    # ---------------------------------------------------------------- writing
    def put(self, rel: str, data: bytes) -> None:
        """Write ``rel`` whole: write-then-rename locally, one PUT on an object store."""
        if self.local:
            atomic_write_bytes(Path(self.join(rel)), data)
            return
        with self.fs.open_output_stream(self.join(rel)) as f:
            f.write(data)

    def upload(self, src: Path, rel: str) -> None:
        """Copy the local file ``src`` to ``rel`` (one object)."""
        self.put(rel, Path(src).read_bytes())

    def delete(self, rel: str) -> None:
        import contextlib

        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.join(rel))


def parse_location(text: str | os.PathLike[str]) -> Location:
    """A ``Location`` for a path or URI; ``LocationError`` (one line: received, allowed) otherwise.

    No network access for a local path; for a URI the filesystem object is made (pyarrow may ask the
    store for the bucket's region) but nothing is read."""
    s = os.fspath(text)
    if not s.strip():
        raise LocationError(f"{s!r}: an empty run directory; expected {ALLOWED}")
    m = _URI.match(s)
    if m is None or m.group("scheme").lower() == "file":
        raw = s[len("file://"):] if m is not None else s
        if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:$", raw):  # "s3:" alone: a URI with its slashes lost
            raise LocationError(f"{s}: not a path nor a URI (a scheme without '//BUCKET/PREFIX'); expected {ALLOWED}")
        p = Path(raw).expanduser().resolve()
        import pyarrow.fs as pafs

        return Location(uri=str(p), fs=pafs.LocalFileSystem(), path=str(p), local=True)
    scheme, rest = m.group("scheme").lower(), m.group("rest").strip("/")
    if not rest:
        raise LocationError(f"{s}: no bucket or path after {scheme}://; expected {ALLOWED}")
    uri = f"{scheme}://{rest}"
    if scheme in _PYARROW_SCHEMES:
        import pyarrow.fs as pafs

        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except Exception as e:
            raise LocationError(f"{s}: cannot open ({type(e).__name__}: {_first_line(e)})") from None
        return Location(uri=uri, fs=fs, path=path.rstrip("/"), local=False)
    try:
        import fsspec
    except ImportError:
        raise LocationError(f"{s}: scheme {scheme!r} needs fsspec (pip install fsspec); expected {ALLOWED}") from None
    if scheme not in fsspec.available_protocols():
        raise LocationError(f"{s}: unknown scheme {scheme!r}; expected {ALLOWED}")
    try:
        import pyarrow.fs as pafs

        ffs, path = fsspec.core.url_to_fs(uri)
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(ffs))
    except Exception as e:  # the protocol's package missing, bad options...
        raise LocationError(f"{s}: cannot open through fsspec ({type(e).__name__}: {_first_line(e)})") from None
    return Location(uri=uri, fs=fs, path=str(path).rstrip("/"), local=False)


def is_uri(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names a non-local location (``scheme://...``, ``file://`` excepted)."""
    m = _URI.match(os.fspath(text))
    return m is not None and m.group("scheme").lower() != "file"


def check_reachable(loc: Location, *, what: str) -> None:
    """Refuse (``LocationError``) a store location whose bucket/root does not exist or cannot be listed."""
    if loc.local:
        return
    import pyarrow.fs as pafs

    root = loc.path.split("/", 1)[0]
    try:
        info = loc.fs.get_file_info(root)
    except Exception as e:
        raise LocationError(f"{what} {loc.uri}: cannot reach the store ({type(e).__name__}: {_first_line(e)})") \
            from None
    if info.type == pafs.FileType.NotFound:
        raise LocationError(f"{what} {loc.uri}: no bucket (or root) {root!r} there; create it first, or check the "
                            "name and the endpoint (AWS_ENDPOINT_URL_S3 ...)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""
