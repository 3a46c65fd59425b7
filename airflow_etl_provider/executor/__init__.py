"""Code that runs on the Spark executors: the functions shipped to ``mapInArrow`` (and, for the streaming
operator, ``foreachBatch``), and the sinks and writers they use.

The rule: nothing here imports Airflow, nor any module that does (``hooks``, ``operators``). On a real
cluster the executors have no Airflow installed, and under an Airflow worker the Task SDK supervisor sets
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow-db-not-allowed:///`` for the task process and everything it
starts, Spark's Python workers included, so ``import airflow`` fails there. Connections are resolved on the
driver (by the hooks) and arrive here as plain settings. Allowed imports: the pure :mod:`core`, this
package, the standard library, ``pyspark``, ``pyarrow`` and the client libraries (``confluent_kafka``,
``boto3``, ``psycopg``). ``tests/unit/test_executor_side.py`` enforces it; ``requirements-executor.txt``
lists what an executor needs installed.
"""

from __future__ import annotations
