"""Replace a Parquet directory without destroying the old data first (see :func:`overwrite_parquet`).

File-system I/O shared by the load operator's Parquet target and the data-quality operator's ``output``.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_etl_provider.core.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

#: Sibling directories of an overwritten Parquet path: ``_<name>.etl-staging-<token>`` (the new data being
#: written) and ``_<name>.etl-previous-<token>`` (the old data while it is swapped out). The leading ``_``
#: hides them from Spark and Hive readers of the parent directory.
PARQUET_STAGING_TAG = ".etl-staging-"
PARQUET_PREVIOUS_TAG = ".etl-previous-"


class _FileSystem:
    """The few operations the Parquet swap needs: a Hadoop ``FileSystem`` through the JVM (classic Spark: local,
    HDFS, s3a, gs, abfs ...) or, without a JVM (Spark Connect), Python's ``os`` for local paths."""

    def __init__(self, spark: Any, path: str, field: str = "target.path") -> None:
        self.field = field  # the config field named in errors
        self.jvm_fs: Any = None
        self.local = False
        try:
            sc = spark.sparkContext
        except Exception as err:  # Spark Connect has no SparkContext (nor a JVM in this process)
            log.debug("No SparkContext (%s): swapping with Python for local paths only", type(err).__name__)
            sc = None
        if sc is not None:
            self._path = sc._jvm.org.apache.hadoop.fs.Path
            self.jvm_fs = self._path(path).getFileSystem(sc._jsc.hadoopConfiguration())
        else:
            from urllib.parse import urlparse

            self.local = urlparse(path).scheme in ("", "file")

    @property
    def usable(self) -> bool:
        return self.jvm_fs is not None or self.local

    @staticmethod
    def _os(path: str) -> str:
        return path[len("file://"):] if path.startswith("file://") else path[5:] if path.startswith("file:") else path

    def split(self, path: str) -> tuple[str, str]:
        """``(parent, name)`` of an absolute, qualified ``path``."""
        if self.jvm_fs is not None:
            qualified = self.jvm_fs.makeQualified(self._path(path))
            parent = qualified.getParent()
            if parent is None:
                raise ConfigError(self.field, "must not be a filesystem root", value=path)
            return str(parent.toString()), str(qualified.getName())
        absolute = os.path.abspath(self._os(path))
        if os.path.dirname(absolute) == absolute:
            raise ConfigError(self.field, "must not be a filesystem root", value=path)
        return os.path.dirname(absolute), os.path.basename(absolute)

    def join(self, parent: str, name: str) -> str:
        if self.jvm_fs is not None:
            return str(self._path(self._path(parent), name).toString())
        return os.path.join(parent, name)

    def exists(self, path: str) -> bool:
        if self.jvm_fs is not None:
            return bool(self.jvm_fs.exists(self._path(path)))
        return os.path.lexists(self._os(path))

    def rename(self, src: str, dst: str) -> None:
        """Rename, or raise (Hadoop's ``rename`` reports some failures by returning ``False``)."""
        if self.jvm_fs is not None:
            if not self.jvm_fs.rename(self._path(src), self._path(dst)):
                raise OSError(f"the filesystem refused to rename {src} to {dst}")
            return
        os.rename(self._os(src), self._os(dst))

    def delete(self, path: str) -> None:
        if self.jvm_fs is not None:
            self.jvm_fs.delete(self._path(path), True)
            return
        import shutil

        if os.path.isdir(self._os(path)) and not os.path.islink(self._os(path)):
            shutil.rmtree(self._os(path))
        elif os.path.lexists(self._os(path)):
            os.remove(self._os(path))

    def children(self, path: str) -> list[str]:
        if self.jvm_fs is not None:
            return [str(st.getPath().getName()) for st in self.jvm_fs.listStatus(self._path(path))]
        return os.listdir(self._os(path))


def _delete_or_warn(fs: _FileSystem, path: str, why: str) -> None:
    try:
        fs.delete(path)
    except Exception as err:  # the data is where it must be; only a hidden leftover remains: say so
        log.warning("Could not delete %s (%s): %s: %s; it is hidden from readers (leading '_'), delete it by hand",
                    path, why, type(err).__name__, err)


def _recover_interrupted_swap(fs: _FileSystem, parent: str, name: str, path: str) -> None:
    """A task killed between the swap's two renames leaves no data at ``path`` and the old data in
    ``_<name>.etl-previous-<token>``: put it back. Other leftovers of earlier overwrites are only reported
    (a concurrent overwrite of the same path may still be using them)."""
    try:
        leftovers = sorted(c for c in fs.children(parent) if c.startswith(f"_{name}.etl-"))
    except Exception as err:  # e.g. the parent does not exist yet: nothing to recover
        log.debug("No leftovers of earlier overwrites of %s (%s: %s)", path, type(err).__name__, err)
        return
    previous = [c for c in leftovers if c.startswith(f"_{name}{PARQUET_PREVIOUS_TAG}")]
    if previous and not fs.exists(path):
        if len(previous) > 1:
            raise RuntimeError(f"{path} is missing and {len(previous)} earlier versions of it were left by interrupted "
                               f"overwrites: {', '.join(fs.join(parent, p) for p in previous)}; rename the right one "
                               f"to {path} and delete the others, then run the task again")
        fs.rename(fs.join(parent, previous[0]), path)
        log.warning("Restored %s from %s: an earlier overwrite was interrupted between its two renames", path,
                    fs.join(parent, previous[0]))
        leftovers.remove(previous[0])
    if leftovers:
        log.warning("Leftovers of earlier interrupted overwrites of %s (hidden from readers; delete them once no "
                    "other task overwrites this path): %s", path, ", ".join(fs.join(parent, c) for c in leftovers))


def overwrite_parquet(df: DataFrame, path: str, partition_by: Sequence[str] = (),
                      call: Callable[..., Any] | None = None, *, field: str = "target.path") -> None:
    """Replace the Parquet data at ``path`` with ``df`` without ever destroying the old data first.

    Spark's ``mode("overwrite")`` deletes the old files before it writes: a write that fails half-way (a bad
    row, an executor lost for good) leaves nothing. Here ``df`` is written to a hidden sibling
    ``_<name>.etl-staging-<token>``; only once that write succeeded, the old directory is renamed aside to
    ``_<name>.etl-previous-<token>``, the new one renamed into place, and the old one deleted. A failed write
    leaves the old data untouched (and its staging directory deleted).

    What is still not atomic, honestly:

    * local filesystems and HDFS: two metadata renames; between them (well under a millisecond here) ``path``
      does not exist, so a reader listing it at that instant fails with "path does not exist" (it never sees
      mixed or partial data). A task killed right there leaves the old data in ``_<name>.etl-previous-*``;
      the next overwrite of ``path`` puts it back first.
    * object stores (s3a, gs, abfs without hierarchical namespace): a rename copies every object, so each of
      the two renames takes time proportional to the data and readers can see a partial directory meanwhile.
      The old data is still never deleted before the new data is completely in place; if a rename fails the
      error names where the old and the new data are.
    * ``spark.sql.sources.partitionOverwriteMode=dynamic`` with ``partition_by``: Spark's own dynamic overwrite
      is used (it stages the new partitions and only replaces them at commit), so a failed write also keeps
      the old data; partitions not written keep theirs.
    * Spark Connect (no JVM here) with a non-local path: Spark's plain overwrite, with a warning.

    :param df: the new data.
    :param path: the Parquet directory (any Hadoop filesystem URI, or a local path).
    :param partition_by: partition columns.
    :param call: runs the Spark write (e.g. ``guard.call`` for retries and the circuit breaker); a retried
        write starts over in the same staging directory.
    :param field: the operator argument ``path`` came from, named in configuration errors.
    """
    def write(to: str) -> None:
        writer = df.write.mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        (call or (lambda fn, *a: fn(*a)))(writer.parquet, to)

    spark = df.sparkSession
    dynamic = bool(partition_by) and str(
        spark.conf.get("spark.sql.sources.partitionOverwriteMode", "static")).lower() == "dynamic"
    fs = _FileSystem(spark, path, field)
    if dynamic or not fs.usable:
        if not dynamic:
            log.warning("Overwriting %s in place: on Spark Connect only local paths can be swapped, so a write that "
                        "fails now leaves no data there", path)
        write(path)
        return
    parent, name = fs.split(path)
    _recover_interrupted_swap(fs, parent, name, path)
    token = uuid.uuid4().hex[:12]
    staging = fs.join(parent, f"_{name}{PARQUET_STAGING_TAG}{token}")
    previous = fs.join(parent, f"_{name}{PARQUET_PREVIOUS_TAG}{token}")
    try:
        write(staging)
        if not fs.exists(staging):
            raise RuntimeError(f"Spark wrote {staging}, but this process does not see it: the Spark Connect server "
                               "writes to another filesystem, so the overwrite cannot be swapped into place; delete "
                               "that directory on the server")
    except BaseException:
        _delete_or_warn(fs, staging, "the failed write's staging directory")
        raise
    had_old = fs.exists(path)
    if had_old:
        try:
            fs.rename(path, previous)
        except Exception as err:
            _delete_or_warn(fs, staging, "the new data, not swapped in")
            raise OSError(f"overwrite of {path} failed: could not move the old data aside to {previous} ({err}); "
                          "the old data is unchanged") from err
    try:
        fs.rename(staging, path)
    except Exception as err:
        if had_old:
            try:
                fs.rename(previous, path)
            except Exception as back:
                raise OSError(f"overwrite of {path} failed: could not move the new data {staging} into place ({err}) "
                              f"nor the old data back ({back}): the old data is in {previous}, the new in "
                              f"{staging}") from err
        raise OSError(f"overwrite of {path} failed: could not move the new data {staging} into place ({err}); the "
                      f"old data is back in place; the new data is left in {staging}") from err
    if had_old:
        _delete_or_warn(fs, previous, "the replaced data")
    log.info("Overwrote %s: new data written to %s, then swapped into place", path, staging)
