"""The COPY writer: the ``mapInArrow`` function that streams one partition's rows into a PostgreSQL staging
table with ``COPY``, on the Spark executors (``stage_method="copy"`` of
:class:`~airflow_etl_provider.hooks.postgres_load.PostgresLoader`).

Executor-side code: imports neither Airflow nor any module that does (see :mod:`airflow_etl_provider.executor`).
The connection parameters are resolved on the driver (``PostgresLoader.copy_conn_args``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

#: The status row each COPY partition returns.
COPY_STATUS_SCHEMA = "partition INT, attempt INT, rows BIGINT"


def copy_writer(
    conn_args: dict[str, Any], copy_sql: str, to_utc: Sequence[int], binary: Sequence[int]
) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The ``mapInArrow`` function that COPYs one partition's Arrow batches into the staging table.

    It is a closure that only refers to its own arguments and imports inside (``pyarrow``,
    ``psycopg``, ``pyspark``), so cloudpickle ships it by value: the executors need neither Airflow nor
    this package (it lives here so that a by-reference pickle could not need them either). One connection and one transaction per task attempt: an attempt that fails rolls
    back, one that succeeds commits its rows (a re-executed partition writes the same row ids again,
    which the merge deduplicates).

    :param to_utc: column positions of session-time-zone timestamps going to ``timestamptz``: written
        in UTC (``Z``), so no historic zone offset with seconds is ever rounded.
    :param binary: column positions of binary columns: written as ``\\x`` hex (``bytea`` input).
    """
    conn_args = dict(conn_args)
    utc, binary = frozenset(to_utc), list(binary)

    def _timestamp_text(array: Any, in_utc: bool) -> Any:
        """A zoned Arrow timestamp array as the text Arrow's CSV writer would write, ~20x faster.

        Arrow's CSV writer formats a zoned timestamp value by value through the time zone database (~5 s of
        CPU per million values, measured: most of a COPY partition's time). The same text built with
        vectorised kernels: ``in_utc`` (the value goes to ``timestamptz``) the UTC wall time with a ``Z``, exactly
        what the writer writes for a UTC array; otherwise the session zone's wall time without an offset, which
        is what a ``timestamp`` column keeps of the writer's ``+hhmm`` text anyway. NULLs stay NULL.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        unit = array.type.unit
        if in_utc:
            return pc.binary_join_element_wise(array.cast(pa.timestamp(unit)).cast(pa.string()), "Z", "")
        return pc.local_timestamp(array).cast(pa.string())

    def write_partition(batches: Iterator[Any]) -> Iterator[Any]:
        import psycopg
        import pyarrow as pa
        import pyarrow.csv as pacsv
        from pyspark import TaskContext

        ctx = TaskContext.get()
        partition = ctx.partitionId() if ctx is not None else -1
        attempt = ctx.attemptNumber() if ctx is not None else 0
        options = pacsv.WriteOptions(include_header=False, batch_size=4096)
        rows = 0
        with psycopg.connect(**conn_args) as conn:  # commits on success, rolls back on error, closes
            conn.execute("SET synchronous_commit = off")
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for batch in batches:
                    if batch.num_rows == 0:
                        continue
                    zoned = [i for i, f in enumerate(batch.schema)
                             if pa.types.is_timestamp(f.type) and f.type.tz]
                    if zoned or binary:
                        arrays = list(batch.columns)
                        for i in zoned:
                            arrays[i] = _timestamp_text(arrays[i], i in utc)
                        for i in binary:
                            arrays[i] = pa.array([None if v is None else "\\x" + v.hex()
                                                  for v in arrays[i].to_pylist()], pa.string())
                        batch = pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)
                    sink = pa.BufferOutputStream()
                    pacsv.write_csv(batch, sink, options)
                    copy.write(memoryview(sink.getvalue()))
                    rows += batch.num_rows
        yield pa.RecordBatch.from_pydict(
            {"partition": [partition], "attempt": [attempt], "rows": [rows]},
            schema=pa.schema([("partition", pa.int32()), ("attempt", pa.int32()), ("rows", pa.int64())]),
        )

    return write_partition

