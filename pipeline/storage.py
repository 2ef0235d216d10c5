"""Checkpoint storage given as a URI (`--storage-path s3://bucket/prefix`, gs://, or any scheme
pyarrow knows): listing a run's directories and reading its files through `pyarrow.fs`, the way
Ray Train writes them (it resolves the same string with pyarrow.fs.FileSystem.from_uri).

Local paths never come here: every caller keeps its Path/glob code for them. The endpoint and
credentials are pyarrow's: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION (or
an instance profile), AWS_ENDPOINT_URL for an S3-compatible store, or `?endpoint_override=
host:port&scheme=http` in the URI itself; GOOGLE_APPLICATION_CREDENTIALS for gs://. A query
string stays at the end of every URI built here, so each one resolves to the same store.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator


def is_uri(path: object) -> bool:
    """A storage path with a scheme (s3://, gs://, ...), read through pyarrow.fs."""
    return "://" in str(path)


def join(base: str, *names: str) -> str:
    """base/name/..., with a URI's query string (endpoint_override=...) kept at the end."""
    if not is_uri(base):
        return "/".join([str(base), *names])
    parts = urllib.parse.urlsplit(base)
    path = "/".join([parts.path.rstrip("/"), *names])
    return urllib.parse.urlunsplit(parts._replace(path=path))


def name(path: str) -> str:
    """The last part of a path or URI (without the URI's query string)."""
    if is_uri(path):
        path = urllib.parse.urlsplit(path).path or urllib.parse.urlsplit(path).netloc
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/").rsplit("/", 1)[0]))


def resolve(uri: str):
    """(pyarrow filesystem, path on it) of a URI, as Ray resolves its storage_path."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def to_uri(storage: str, fs_path: str) -> str:
    """The URI of a path on storage's filesystem (a Ray Checkpoint's .path has no scheme)."""
    parts = urllib.parse.urlsplit(storage)
    bucket, _, rest = fs_path.lstrip("/").partition("/")
    return urllib.parse.urlunsplit(parts._replace(netloc=bucket, path="/" + rest))


class StoreError(OSError):
    """The store does not answer, refuses the credentials, or has no such bucket."""


def _entries(uri: str):
    """FileInfo of each entry directly under uri ([] when there is none)."""
    import pyarrow.fs

    fs, path = resolve(uri)
    try:
        return fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise StoreError(f"cannot list {uri} ({str(exc).splitlines()[0]})") from None


def run_dirs(run_dir: str) -> list[str]:
    """The directories beside run_dir whose name starts with its name (the run's first Ray
    directory and its -resume<N> ones): glob(f"{run_dir}*") of a local store."""
    import pyarrow.fs

    prefix = name(run_dir)
    return sorted(join(parent(run_dir), info.base_name) for info in _entries(parent(run_dir))
                  if info.type == pyarrow.fs.FileType.Directory
                  and info.base_name.startswith(prefix))


def list_checkpoints(run_dir: str, filename: str) -> list[str]:
    """URIs of every checkpoint_<step> holding `filename` under the run's directories, newest
    first (what trainer.list_checkpoints globs on a local store). A directory whose file has
    not appeared (an upload in progress, or a kill before it ended) is left out: on an object
    store each file is one object, present only once its upload completed."""
    import pyarrow.fs

    found = []
    for directory in run_dirs(run_dir):
        for info in _entries(directory):
            if info.type != pyarrow.fs.FileType.Directory or \
                    not info.base_name.startswith("checkpoint_"):
                continue
            checkpoint = join(directory, info.base_name)
            if is_file(join(checkpoint, filename)):
                found.append(checkpoint)
    return sorted(found, key=name, reverse=True)


def is_file(uri: str) -> bool:
    import pyarrow.fs

    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path).type == pyarrow.fs.FileType.File
    except OSError as exc:
        raise StoreError(f"cannot read {uri} ({str(exc).splitlines()[0]})") from None


@contextlib.contextmanager
def downloaded(uri: str) -> Iterator[str]:
    """The file at uri copied into a temp directory (removed on exit): its local path."""
    fs, path = resolve(uri)
    directory = tempfile.mkdtemp(prefix="genbench-download-")
    local = os.path.join(directory, name(uri))
    try:
        try:
            with fs.open_input_stream(path) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except OSError as exc:  # gone, refused, or the store went away mid-copy
            raise StoreError(f"cannot read {uri} ({str(exc).splitlines()[0]})") from None
        yield local
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def check_reachable(uri: str) -> None:
    """Raise StoreError when the store cannot be listed (no endpoint, no bucket, refused)."""
    import pyarrow.fs

    fs, path = resolve(uri)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise StoreError(f"cannot reach {uri} ({str(exc).splitlines()[0]})") from None
    if info.type == pyarrow.fs.FileType.NotFound:
        raise StoreError(f"{uri}: bucket {bucket} does not exist")
