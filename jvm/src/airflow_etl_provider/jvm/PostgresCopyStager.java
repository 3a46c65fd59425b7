/*
 * The COPY staging writer on the JVM side of Spark (stage_method="copy" of PostgresLoader on a classic
 * session: embedded local[*] or a standalone cluster).
 *
 * Why it exists (benchmarks/bench_load_postgres.py): handing a partition's rows to a Python worker through
 * Arrow costs ~7 CPU-s per million orders, the rows' own scan in the JVM ~1 s. This writer renders the rows
 * as COPY CSV where Spark already has them and streams them with PgJDBC's CopyManager: no Arrow hand-over,
 * no Python worker. The text is the one the Python writer (airflow_etl_provider/executor/postgres_copy.py)
 * sends, value for value (tests/integration/test_postgres_load.py runs the same edge values through both).
 *
 * Contract with the driver (airflow_etl_provider/hooks/postgres_load/jvm_copy.py):
 *   - the Dataset's columns are the staging table's, in order; timestamps arrive as unix_micros(),
 *     dates as unix_date(): plain longs and ints, so no java.sql.Timestamp calendar rebasing is involved;
 *   - kinds: one letter per column (see KIND_* below);
 *   - one connection and one transaction per task attempt: an attempt that fails rolls back, one that
 *     succeeds commits (a re-executed partition writes the same row ids again; the merge deduplicates);
 *   - one status row (partition, attempt, rows) per partition, like the Python writer's.
 *
 * Built by `make jvm-jar` into .local/jars/airflow-etl-jvm.jar (javac against PySpark's jars and the
 * PostgreSQL JDBC driver), which the stack puts on spark.jars. No dependency beyond those two.
 */
package airflow_etl_provider.jvm;

import java.io.Serializable;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Instant;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.ZoneId;
import java.time.ZoneOffset;
import java.util.Collections;
import java.util.Iterator;
import java.util.Map;
import java.util.Properties;

import org.apache.spark.TaskContext;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyIn;

import scala.Tuple3;

public final class PostgresCopyStager {

    /** A string: always quoted ("" doubled), so "" is not NULL and newlines or a lone \. are data. */
    public static final char KIND_STRING = 's';
    /** Integers and booleans: their Java text. */
    public static final char KIND_PLAIN = 'p';
    /** double: Java's shortest round-trip text (NaN, Infinity, -Infinity as PostgreSQL spells them). */
    public static final char KIND_DOUBLE = 'd';
    /** float: the shortest text of the float value (0.1f is "0.1", as Arrow writes it). */
    public static final char KIND_FLOAT = 'f';
    /** decimal: plain notation with the column's scale. */
    public static final char KIND_DECIMAL = 'n';
    /** date as days since 1970-01-01 (unix_date). */
    public static final char KIND_DATE_DAYS = 'D';
    /** timestamp as microseconds since the epoch (unix_micros), going to timestamptz: UTC with +00. */
    public static final char KIND_TS_UTC = 'T';
    /** timestamp as microseconds since the epoch, going elsewhere: the session time zone's wall time. */
    public static final char KIND_TS_LOCAL = 't';
    /** timestamp_ntz (java.time.LocalDateTime): as is. */
    public static final char KIND_TS_NTZ = 'L';
    /** binary: \x hex, bytea's input. */
    public static final char KIND_BINARY = 'b';

    private PostgresCopyStager() {
    }

    /**
     * The staging job, lazily: collect() the result to run it.
     *
     * @param rows the staged columns, in the COPY statement's order
     * @param url jdbc:postgresql://host:port/db
     * @param properties PgJDBC connection properties (user, password, ssl..., ApplicationName)
     * @param copySql COPY staging (cols) FROM STDIN (FORMAT csv)
     * @param kinds one KIND_* letter per column
     * @param sessionZone the session time zone, for KIND_TS_LOCAL
     * @return one row (partition INT, attempt INT, rows BIGINT) per partition
     */
    public static Dataset<Row> stage(Dataset<Row> rows, String url, Map<String, String> properties, String copySql,
                                     String kinds, String sessionZone) {
        if (kinds.length() != rows.schema().fields().length) {
            throw new IllegalArgumentException("kinds has " + kinds.length() + " letters for "
                    + rows.schema().fields().length + " columns");
        }
        Properties props = new Properties();
        props.putAll(properties);
        Writer writer = new Writer(url, props, copySql, kinds, sessionZone);
        return rows.mapPartitions(writer, Encoders.tuple(Encoders.INT(), Encoders.INT(), Encoders.LONG()))
                .toDF("partition", "attempt", "rows");
    }

    /** The per-partition function (serialized to the executors). */
    static final class Writer implements MapPartitionsFunction<Row, Tuple3<Integer, Integer, Long>>, Serializable {
        private static final long serialVersionUID = 1L;
        private static final int FLUSH_CHARS = 1 << 16;

        private final String url;
        private final Properties props;
        private final String copySql;
        private final char[] kinds;
        private final String sessionZone;

        Writer(String url, Properties props, String copySql, String kinds, String sessionZone) {
            this.url = url;
            this.props = props;
            this.copySql = copySql;
            this.kinds = kinds.toCharArray();
            this.sessionZone = sessionZone;
        }

        @Override
        public Iterator<Tuple3<Integer, Integer, Long>> call(Iterator<Row> input) throws SQLException {
            TaskContext ctx = TaskContext.get();
            int partition = ctx != null ? ctx.partitionId() : -1;
            int attempt = ctx != null ? ctx.attemptNumber() : 0;
            ZoneId zone = ZoneId.of(sessionZone);
            long count = 0;
            // The driver class directly, not DriverManager: Spark loads it in a child class loader
            // DriverManager does not search.
            try (Connection conn = new org.postgresql.Driver().connect(url, props)) {
                if (conn == null) {
                    throw new SQLException("PgJDBC does not accept the URL " + url);
                }
                conn.setAutoCommit(false);
                try (Statement st = conn.createStatement()) {
                    st.execute("SET synchronous_commit = off");
                }
                CopyIn copy = conn.unwrap(PGConnection.class).getCopyAPI().copyIn(copySql);
                try {
                    StringBuilder sb = new StringBuilder(FLUSH_CHARS + 4096);
                    while (input.hasNext()) {
                        appendRow(sb, input.next(), zone);
                        count++;
                        if (sb.length() >= FLUSH_CHARS) {
                            flush(copy, sb);
                        }
                    }
                    flush(copy, sb);
                    copy.endCopy();
                } finally {
                    if (copy.isActive()) {
                        copy.cancelCopy();
                    }
                }
                conn.commit();
            }
            return Collections.singletonList(new Tuple3<>(partition, attempt, count)).iterator();
        }

        private static void flush(CopyIn copy, StringBuilder sb) throws SQLException {
            if (sb.length() == 0) {
                return;
            }
            byte[] bytes = sb.toString().getBytes(StandardCharsets.UTF_8);
            copy.writeToCopy(bytes, 0, bytes.length);
            sb.setLength(0);
        }

        private void appendRow(StringBuilder sb, Row row, ZoneId zone) {
            for (int i = 0; i < kinds.length; i++) {
                if (i > 0) {
                    sb.append(',');
                }
                if (row.isNullAt(i)) {
                    continue; // an unquoted empty field: NULL
                }
                switch (kinds[i]) {
                    case KIND_STRING:
                        appendQuoted(sb, row.getString(i));
                        break;
                    case KIND_PLAIN:
                        sb.append(row.get(i));
                        break;
                    case KIND_DOUBLE:
                        sb.append(Double.toString(row.getDouble(i)));
                        break;
                    case KIND_FLOAT:
                        sb.append(Float.toString(row.getFloat(i)));
                        break;
                    case KIND_DECIMAL:
                        sb.append(((BigDecimal) row.get(i)).toPlainString());
                        break;
                    case KIND_DATE_DAYS:
                        appendDate(sb, LocalDate.ofEpochDay(((Number) row.get(i)).longValue()), true);
                        break;
                    case KIND_TS_UTC:
                        appendTimestamp(sb, row.getLong(i), null);
                        break;
                    case KIND_TS_LOCAL:
                        appendTimestamp(sb, row.getLong(i), zone);
                        break;
                    case KIND_TS_NTZ:
                        appendDateTime(sb, (LocalDateTime) row.get(i), "");
                        break;
                    case KIND_BINARY:
                        appendHex(sb, (byte[]) row.get(i));
                        break;
                    default:
                        throw new IllegalStateException("unknown column kind '" + kinds[i] + "'");
                }
            }
            sb.append('\n');
        }
    }

    static void appendQuoted(StringBuilder sb, String s) {
        sb.append('"');
        if (s.indexOf('"') < 0) {
            sb.append(s);
        } else {
            for (int k = 0; k < s.length(); k++) {
                char c = s.charAt(k);
                if (c == '"') {
                    sb.append('"');
                }
                sb.append(c);
            }
        }
        sb.append('"');
    }

    /** A timestamp in microseconds since the epoch: UTC with "+00" (zone null) or the zone's wall time. */
    static void appendTimestamp(StringBuilder sb, long micros, ZoneId zone) {
        long seconds = Math.floorDiv(micros, 1_000_000L);
        int fraction = (int) Math.floorMod(micros, 1_000_000L);
        ZoneOffset offset = zone == null ? ZoneOffset.UTC : zone.getRules().getOffset(Instant.ofEpochSecond(seconds));
        appendDateTime(sb, LocalDateTime.ofEpochSecond(seconds, fraction * 1000, offset), zone == null ? "+00" : "");
    }

    /** yyyy-mm-dd hh:mm:ss.ffffff[suffix][ BC]: the ISO form PostgreSQL reads in every DateStyle. */
    static void appendDateTime(StringBuilder sb, LocalDateTime t, String suffix) {
        appendDate(sb, t.toLocalDate(), false);
        sb.append(' ');
        pad(sb, t.getHour(), 2);
        sb.append(':');
        pad(sb, t.getMinute(), 2);
        sb.append(':');
        pad(sb, t.getSecond(), 2);
        sb.append('.');
        pad(sb, t.getNano() / 1000, 6);
        sb.append(suffix);
        if (t.getYear() <= 0) {
            sb.append(" BC");
        }
    }

    /** yyyy-mm-dd; ISO year 0 is 1 BC, -1 is 2 BC (PostgreSQL has no year 0). */
    static void appendDate(StringBuilder sb, LocalDate d, boolean era) {
        int year = d.getYear();
        pad(sb, year <= 0 ? 1 - year : year, 4);
        sb.append('-');
        pad(sb, d.getMonthValue(), 2);
        sb.append('-');
        pad(sb, d.getDayOfMonth(), 2);
        if (era && year <= 0) {
            sb.append(" BC");
        }
    }

    private static void pad(StringBuilder sb, int value, int width) {
        String s = Integer.toString(value);
        for (int k = s.length(); k < width; k++) {
            sb.append('0');
        }
        sb.append(s);
    }

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    static void appendHex(StringBuilder sb, byte[] bytes) {
        sb.append("\\x");
        for (byte b : bytes) {
            sb.append(HEX[(b >> 4) & 0xf]).append(HEX[b & 0xf]);
        }
    }
}
