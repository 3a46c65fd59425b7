# Spark Connect server (and standalone master/worker) with the connectors the Spark image lacks
# (Kafka source/sink, PostgreSQL JDBC), fetched by the same POM as `make spark-jars`.
FROM maven:3.9-eclipse-temurin-17 AS jars
COPY build/maven/spark-pom.xml /work/pom.xml
RUN mvn -q -B -f /work/pom.xml dependency:copy-dependencies -DexcludeTransitive=true -DoutputDirectory=/work/jars

FROM apache/spark:4.2.0
COPY --from=jars /work/jars/*.jar /opt/spark/jars/
