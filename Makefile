# airflow-etl-provider -- two commands on a fresh machine:
#   make demo   set everything up, run the example DAGs end to end against the local stack, print a summary
#   make test   set everything up, run the whole suite (unit, then integration), stop the services
# Everything is cached in project-local ignored folders (.venv, .local) so a second run is fast.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
LOCAL := $(ROOT)/.local
PYTHON ?= python3
STACK := $(ROOT)/scripts/stack.sh

.PHONY: help setup system-deps venv executor-venv jars kafka-jars spark-jars jvm-jar services-up services-down services-status \
        airflow-up airflow-down e2e \
        airflow-db test unit integration demo lint typecheck bench constraints clean distclean

help:
	@echo "make demo | make test | make airflow-up | make airflow-down | make services-up | make services-down | make services-status | make bench | make lint"

# ------------------------------------------------------------------ set-up (idempotent, cached)
setup: system-deps venv executor-venv jars jvm-jar

system-deps: $(LOCAL)/.system-deps
$(LOCAL)/.system-deps: Makefile
	@mkdir -p $(LOCAL)
	@echo "[setup] checking Debian packages (PostgreSQL, Pushgateway, JDK, Maven, curl, Chromium for the report test)"
	@missing=""; \
	 for p in postgresql prometheus-pushgateway openjdk-17-jdk-headless maven curl chromium; do \
	   dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	 if [ -n "$$missing" ]; then \
	   echo "[setup] apt-get install$$missing"; \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	 fi
	@touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: setup.cfg constraints.txt pyproject.toml
	@echo "[setup] creating the virtualenv and installing pinned dependencies (first time ~2-4 min)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade "pip>=24" "setuptools>=68" wheel
	@$(PIP) install -q -c constraints.txt -e ".[dev]"
	@$(PIP) check >/dev/null
	@touch $@
	@echo "[setup] virtualenv ready: $(VENV)"

# The Python of the Spark executors: what requirements-executor.txt lists and this package with --no-deps,
# no Airflow (as on a real cluster). The standalone cluster and the Spark Connect server of the local stack
# run their Python workers here, so the tests prove the executor-side code needs no Airflow.
EXEC_VENV := $(LOCAL)/executor-venv
PKG_SOURCES := $(shell find $(ROOT)/airflow_etl_provider -name '*.py' 2>/dev/null) setup.cfg pyproject.toml
executor-venv: $(EXEC_VENV)/.package
$(EXEC_VENV)/.installed: requirements-executor.txt constraints.txt
	@echo "[setup] creating the executors' virtualenv (no Airflow): $(EXEC_VENV)"
	@test -x $(EXEC_VENV)/bin/python || $(PYTHON) -m venv $(EXEC_VENV)
	@$(EXEC_VENV)/bin/pip install -q --upgrade "pip>=24"
	@$(EXEC_VENV)/bin/pip install -q -c constraints.txt -r requirements-executor.txt
	@touch $@
$(EXEC_VENV)/.package: $(EXEC_VENV)/.installed $(PKG_SOURCES)
	@rm -rf $(LOCAL)/executor-src && mkdir -p $(LOCAL)/executor-src
	@cp -r setup.cfg pyproject.toml README.md airflow_etl_provider $(LOCAL)/executor-src/
	@$(EXEC_VENV)/bin/pip install -q --no-deps --force-reinstall $(LOCAL)/executor-src
	@! $(EXEC_VENV)/bin/python -c 'import airflow' 2>/dev/null || { echo "[setup] Airflow leaked into $(EXEC_VENV)"; exit 1; }
	@touch $@

jars: kafka-jars spark-jars

kafka-jars: $(LOCAL)/kafka/libs/.fetched
$(LOCAL)/kafka/libs/.fetched: build/maven/kafka-pom.xml
	@echo "[setup] fetching the Apache Kafka broker jars with Maven"
	@rm -rf $(LOCAL)/kafka/libs && mkdir -p $(LOCAL)/kafka/libs
	@mvn -q -B -f build/maven/kafka-pom.xml dependency:copy-dependencies -DincludeScope=runtime \
	    -DoutputDirectory=$(LOCAL)/kafka/libs
	@touch $@

spark-jars: $(LOCAL)/jars/.fetched
$(LOCAL)/jars/.fetched: build/maven/spark-pom.xml
	@echo "[setup] fetching Spark connector jars (Kafka source, PostgreSQL JDBC) with Maven"
	@rm -rf $(LOCAL)/jars && mkdir -p $(LOCAL)/jars
	@mvn -q -B -f build/maven/spark-pom.xml dependency:copy-dependencies -DexcludeTransitive=true \
	    -DoutputDirectory=$(LOCAL)/jars
	@touch $@

# The COPY staging writer on Spark's JVM side (jvm/src): compiled against PySpark's own jars and the PostgreSQL
# JDBC driver (nothing downloaded), into the package (airflow_etl_provider/jars, git-ignored, shipped in a wheel
# built from this tree): SparkSessionHook puts the package's jars on spark.jars.
JVM_SOURCES := $(shell find $(ROOT)/jvm/src -name '*.java' 2>/dev/null)
JVM_JAR := $(ROOT)/airflow_etl_provider/jars/airflow-etl-jvm.jar
jvm-jar: $(JVM_JAR)
$(JVM_JAR): $(JVM_SOURCES) $(LOCAL)/jars/.fetched $(VENV)/.installed
	@echo "[setup] compiling the JVM COPY writer and Kafka dead-letter publisher: $(JVM_JAR)"
	@rm -rf $(LOCAL)/jvm-classes && mkdir -p $(LOCAL)/jvm-classes
	@spark_jars=$$($(PY) -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))'); \
	 javac -nowarn --release 17 -d $(LOCAL)/jvm-classes \
	    -cp "$$spark_jars/*:$$(ls $(LOCAL)/jars/postgresql-*.jar | head -1):$$(ls $(LOCAL)/jars/kafka-clients-*.jar | head -1)" \
	    $(JVM_SOURCES)
	@mkdir -p $(dir $@) && rm -f $(LOCAL)/jars/airflow-etl-jvm.jar
	@jar cf $@.tmp -C $(LOCAL)/jvm-classes . && mv $@.tmp $@

# ------------------------------------------------------------------ the local stack
services-up: setup
	@$(STACK) up

services-down:
	@$(STACK) down

# Airflow 3 itself on 127.0.0.1 (api-server + UI on $$AIRFLOW_API_PORT, default 8080; scheduler with the
# LocalExecutor; dag-processor; triggerer), from the project venv, metadata DB on the local PostgreSQL.
airflow-up: services-up
	@$(STACK) up airflow

airflow-down:
	@$(STACK) down airflow

services-status:
	@$(STACK) status

airflow-db: services-up
	@echo "[setup] migrating the Airflow metadata DB (PostgreSQL)"
	@set -a; . $(LOCAL)/airflow.env; set +a; $(VENV)/bin/airflow db migrate >$(LOCAL)/logs/airflow-db-migrate.log 2>&1 \
	    || { tail -30 $(LOCAL)/logs/airflow-db-migrate.log; exit 1; }

# ------------------------------------------------------------------ the two commands
test: setup
	@$(ROOT)/scripts/run_tests.sh

unit: venv
	@$(PY) -m pytest tests/unit -q

integration: airflow-db
	@set -a; . $(LOCAL)/airflow.env; set +a; $(PY) -m pytest tests/integration -q

e2e: airflow-up
	@set -a; . $(LOCAL)/airflow.env; set +a; $(PY) -m pytest tests/e2e -q

demo: setup
	@$(ROOT)/scripts/demo.sh

# ------------------------------------------------------------------ developer tools
lint: venv
	@$(VENV)/bin/ruff check airflow_etl_provider tests dags benchmarks
	@$(VENV)/bin/mypy

typecheck: venv
	@$(VENV)/bin/mypy

bench: airflow-db bench-peers
	@set -a; . $(LOCAL)/airflow.env; set +a; for b in benchmarks/bench_*.py; do $(PY) $$b; done; \
	    $(PY) benchmarks/breaker_race.py --workers 8 --seconds 20

# ------------------------------------------------------------------ benchmark peers (bench_quality.py, P6)
# PyDeequ and Great Expectations declare pyspark < 4.2 and Maven Central has no Deequ build for Spark 4:
# they get their own pinned venv (pyspark 3.5.7) and the Deequ jar; the project's venv is not touched.
.PHONY: bench-peers
PEERS_VENV := $(LOCAL)/bench-peers/venv
bench-peers: $(PEERS_VENV)/.installed $(LOCAL)/jars-deequ/.fetched

$(PEERS_VENV)/.installed: benchmarks/peers-requirements.txt
	@echo "[bench] creating the benchmark peers' virtualenv (PyDeequ, Great Expectations, pyspark 3.5.7)"
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	@$(PEERS_VENV)/bin/pip install -q --upgrade "pip>=24"
	@$(PEERS_VENV)/bin/pip install -q -r benchmarks/peers-requirements.txt
	@$(PEERS_VENV)/bin/pip check >/dev/null
	@touch $@

$(LOCAL)/jars-deequ/.fetched: build/maven/deequ-pom.xml
	@echo "[bench] fetching the Deequ jar with Maven"
	@rm -rf $(LOCAL)/jars-deequ && mkdir -p $(LOCAL)/jars-deequ
	@mvn -q -B -f build/maven/deequ-pom.xml dependency:copy-dependencies -DexcludeTransitive=true \
	    -DoutputDirectory=$(LOCAL)/jars-deequ
	@touch $@

constraints: venv
	@( head -2 constraints.txt; $(PIP) freeze --exclude-editable | grep -vi '^airflow-etl-provider' ) > constraints.txt.new
	@mv constraints.txt.new constraints.txt

clean: services-down
	@rm -rf $(LOCAL)/pg $(LOCAL)/kafka/data $(LOCAL)/airflow $(LOCAL)/logs $(LOCAL)/run $(LOCAL)/demo

distclean: clean
	@rm -rf $(VENV) $(LOCAL)
