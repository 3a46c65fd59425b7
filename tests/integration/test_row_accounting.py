"""The load operator's ``records_read == records_loaded + records_dead_lettered`` check fires for real: a
``BEFORE INSERT`` trigger on the target silently discards some rows (``RETURN NULL``: no error, no row)."""

from __future__ import annotations

import pytest

from airflow_etl_provider.core.errors import RowAccountingError
from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

pytestmark = pytest.mark.spark


def _pg():
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id="postgres_default")


@pytest.mark.parametrize("mode", ["append", "upsert"])
def test_a_trigger_that_discards_rows_fails_the_task_with_the_numbers(spark, tmp_path, unique, mode) -> None:
    table = f"public.acct_{mode}_{unique}"
    pg = _pg()
    pg.run(f"create table {table} (id int primary key, qty int not null)")
    pg.run(
        f"create function {table}_drop() returns trigger language plpgsql as $$ begin "
        "if new.id % 7 = 0 then return null; end if; return new; end $$"
    )
    pg.run(f"create trigger discard before insert on {table} for each row execute function {table}_drop()")
    rows = [(i, i % 50) for i in range(1, 301)]
    src = tmp_path / "src"
    spark.createDataFrame(rows, "id INT, qty INT").repartition(3).write.parquet(str(src))
    discarded = sum(1 for i, _ in rows if i % 7 == 0)  # what the trigger will swallow, from the input
    op = ResilientSparkLoadOperator(
        task_id="load",
        source={"format": "parquet", "path": str(src)},
        target={
            "type": "postgres",
            "table": table,
            "mode": mode,
            "keys": ["id"] if mode == "upsert" else [],
            "load_id": f"acct-{unique}",
        },
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")},
        circuit_breaker=None,
    )
    try:
        with pytest.raises(RowAccountingError) as info:
            op.execute(context={})
        message = str(info.value)
        # the numbers: the rows read, and the rows the database really took (the trigger kept the others)
        applied = len(rows) - discarded
        assert f"{len(rows)} row(s) to apply but {applied} applied + 0 rejected (read {len(rows)})" in message
        assert "rolled back" in message and table in message
        assert (
            pg.get_first(f"select count(*) from {table}")[0] == 0
        )  # the merge was rolled back: nothing half-done
        assert (
            pg.get_first(
                "select count(*) from public.etl_load_log where load_id = %s", parameters=(f"acct-{unique}",)
            )[0]
            == 0
        )  # not recorded as loaded: a retry loads again
        assert not list((tmp_path / "dlq").rglob("*.jsonl.gz"))  # nothing was passed off as a dead letter
    finally:
        pg.run(f"drop table if exists {table}")
        pg.run(f"drop function if exists {table}_drop()")
