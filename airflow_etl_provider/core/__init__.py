"""Pure core: retry, circuit breaker, data-quality rules and dead-letter envelopes.

Nothing in this package may import Airflow or PySpark (``tests/unit/test_architecture.py`` enforces
it), so every piece is unit-testable with an injected clock and runs anywhere: in a task, on a Spark
executor, or in a CLI.
"""

from __future__ import annotations
