/*
 * The COPY staging writer on the JVM side of Spark (stage_method="copy" of PostgresLoader on a classic
 * session: embedded local[*] or a standalone cluster).
 *
 * Why it exists (benchmarks/bench_load_postgres.py): handing a partition's rows to a Python worker through
 * Arrow costs ~7 CPU-s per million orders, the rows' own scan in the JVM ~1 s. This writer renders the rows
 * as COPY CSV where Spark already has them and streams them with PgJDBC's CopyManager: no Arrow hand-over,
 * no Python worker. The text is the one the Python writer (airflow_etl_provider/executor/postgres_copy.py)
 * sends, value for value (tests/integration/test_postgres_load.py runs the same edge values through both).
 * Where every staging column's type takes it (the driver decides: core/sql.py binary_copy_supported), the rows go
 * in PostgreSQL's binary COPY format instead (CopyBinary): PostgreSQL then parses no text, and the staging of
 * 1M benchmark orders takes less CPU on both sides (tests/integration/test_jvm_copy.py: the same table as CSV).
 *
 * Contract with the driver (airflow_etl_provider/hooks/postgres_load/jvm_copy.py):
 *   - the Dataset's columns are the staging table's, in order; the writer reads Spark's internal rows
 *     (InternalRow: UTF-8 strings as bytes, timestamps as microseconds, dates as days, decimals unscaled),
 *     so nothing is decoded into Java objects and no java.sql.Timestamp calendar rebasing is involved;
 *   - kinds: one letter per column (see KIND_* below);
 *   - one connection and one transaction per task attempt: an attempt that fails rolls back, one that
 *     succeeds commits (a re-executed partition writes the same row ids again; the merge deduplicates);
 *   - one status row (partition, attempt, rows) per partition, like the Python writer's.
 *
 * Built by `make jvm-jar` into airflow_etl_provider/jars/airflow-etl-jvm.jar (javac against PySpark's jars and
 * the PostgreSQL JDBC driver), which SparkSessionHook puts on spark.jars. No dependency beyond those two.
 */
package airflow_etl_provider.jvm;

import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.ZoneId;
import java.time.ZoneOffset;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.spark.TaskContext;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DecimalType;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.Decimal;
import org.apache.spark.unsafe.types.UTF8String;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyIn;

public final class PostgresCopyStager {

    /** A string: always quoted ("" doubled), so "" is not NULL and newlines or a lone \. are data. */
    public static final char KIND_STRING = 's';
    /** Integers and booleans: their decimal text, true/false. */
    public static final char KIND_PLAIN = 'p';
    /** double: Java's shortest round-trip text (NaN, Infinity, -Infinity as PostgreSQL spells them). */
    public static final char KIND_DOUBLE = 'd';
    /** float: the shortest text of the float value (0.1f is "0.1", as Arrow writes it). */
    public static final char KIND_FLOAT = 'f';
    /** decimal: plain notation with the column's scale. */
    public static final char KIND_DECIMAL = 'n';
    /** date (days since 1970-01-01). */
    public static final char KIND_DATE_DAYS = 'D';
    /** timestamp (microseconds since the epoch) going to timestamptz: UTC with +00. */
    public static final char KIND_TS_UTC = 'T';
    /** timestamp going elsewhere: the session time zone's wall time. */
    public static final char KIND_TS_LOCAL = 't';
    /** timestamp_ntz (wall-time microseconds): as is. */
    public static final char KIND_TS_NTZ = 'L';
    /** binary: \x hex, bytea's input. */
    public static final char KIND_BINARY = 'b';

    private PostgresCopyStager() {
    }

    /**
     * Run the staging job: every partition COPYs its rows in its own transaction.
     *
     * @param rows the staged columns, in the COPY statement's order
     * @param url jdbc:postgresql://host:port/db
     * @param properties PgJDBC connection properties (user, password, ssl..., ApplicationName)
     * @param copySql COPY staging (cols) FROM STDIN (FORMAT csv), or (FORMAT binary) with binary
     * @param kinds one KIND_* letter per column
     * @param sessionZone the session time zone, for KIND_TS_LOCAL
     * @param binary write PostgreSQL's binary COPY format (CopyBinary: the driver checked every staging column
     *     type takes it), else CSV
     * @return one {partition, attempt, rows} per partition
     */
    public static List<long[]> stage(Dataset<Row> rows, String url, Map<String, String> properties, String copySql,
                                     String kinds, String sessionZone, boolean binary) {
        StructField[] fields = rows.schema().fields();
        if (kinds.length() != fields.length) {
            throw new IllegalArgumentException("kinds has " + kinds.length() + " letters for " + fields.length
                    + " columns");
        }
        DataType[] types = new DataType[fields.length];
        for (int i = 0; i < fields.length; i++) {
            types[i] = fields[i].dataType();
        }
        Properties props = new Properties();
        props.putAll(properties);
        Writer writer = new Writer(url, props, copySql, kinds, sessionZone, types, binary);
        return Arrays.asList(writer.run(rows, long[].class));
    }

    /** The per-partition function (serialized to the executors). */
    static final class Writer extends PartitionJob<long[]> {
        private static final long serialVersionUID = 4L;
        private static final int FLUSH_BYTES = 1 << 16;

        private final String url;
        private final Properties props;
        private final String copySql;
        private final char[] kinds;
        private final String sessionZone;
        private final DataType[] types;
        private final boolean binary;

        Writer(String url, Properties props, String copySql, String kinds, String sessionZone, DataType[] types,
               boolean binary) {
            this.url = url;
            this.props = props;
            this.copySql = copySql;
            this.kinds = kinds.toCharArray();
            this.sessionZone = sessionZone;
            this.types = types;
            this.binary = binary;
        }

        @Override
        long[] call(TaskContext ctx, scala.collection.Iterator<InternalRow> input) throws SQLException {
            return copy(ctx.partitionId(), ctx.attemptNumber(), input); // its SQLException fails the task as is
        }

        /** COPY one partition's rows in one transaction; returns {partition, attempt, rows}. */
        private long[] copy(long partition, long attempt, scala.collection.Iterator<InternalRow> input)
                throws SQLException {
            Renderer renderer = new Renderer(kinds, types, ZoneId.of(sessionZone));
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
                    Bytes out = new Bytes(FLUSH_BYTES + 8192);
                    CopyBinary tuples = binary ? renderer.binary() : null;
                    if (binary) {
                        out.put(CopyBinary.HEADER);
                    }
                    while (input.hasNext()) {
                        if (binary) {
                            tuples.row(out, input.next());
                        } else {
                            renderer.row(out, input.next());
                        }
                        count++;
                        if (out.size >= FLUSH_BYTES) {
                            copy.writeToCopy(out.buf, 0, out.size);
                            out.size = 0;
                        }
                    }
                    if (binary) {
                        out.put(CopyBinary.TRAILER);
                    }
                    if (out.size > 0) {
                        copy.writeToCopy(out.buf, 0, out.size);
                    }
                    copy.endCopy();
                } finally {
                    if (copy.isActive()) {
                        copy.cancelCopy();
                    }
                }
                conn.commit();
            }
            return new long[] {partition, attempt, count};
        }
    }

    /** Renders internal rows as COPY CSV lines. */
    static final class Renderer {
        private static final byte[] HEX = "0123456789abcdef".getBytes(StandardCharsets.US_ASCII);
        private final char[] kinds;
        private final int[] precision;
        private final int[] scale;
        private final ZoneId zone;

        Renderer(char[] kinds, DataType[] types, ZoneId zone) {
            this.zone = zone;
            this.kinds = kinds.clone();
            precision = new int[kinds.length];
            scale = new int[kinds.length];
            for (int i = 0; i < kinds.length; i++) {
                if (types[i] instanceof DecimalType) {
                    precision[i] = ((DecimalType) types[i]).precision();
                    scale[i] = ((DecimalType) types[i]).scale();
                }
                if (kinds[i] == KIND_PLAIN) { // resolved once per column, not per value
                    this.kinds[i] = plainKind(types[i], i);
                }
            }
        }

        /** The same columns as binary COPY tuples. */
        CopyBinary binary() {
            return new CopyBinary(kinds, precision, scale, zone);
        }

        /** A boolean column (integers: Integers.BYTE ... LONG). */
        static final char BOOLEAN = 'B';

        private static char plainKind(DataType type, int i) {
            if (type.typeName().equals("boolean")) {
                return BOOLEAN;
            }
            try {
                return Integers.width(type, String.valueOf(i));
            } catch (IllegalArgumentException err) {
                throw new IllegalStateException("column " + i + " (" + type.typeName()
                        + ") is not an integer or boolean");
            }
        }

        void row(Bytes out, InternalRow row) {
            for (int i = 0; i < kinds.length; i++) {
                if (i > 0) {
                    out.put((byte) ',');
                }
                if (row.isNullAt(i)) {
                    continue; // an unquoted empty field: NULL
                }
                switch (kinds[i]) {
                    case KIND_STRING:
                        quoted(out, row.getUTF8String(i));
                        break;
                    case BOOLEAN:
                        out.ascii(row.getBoolean(i) ? "true" : "false");
                        break;
                    case Integers.BYTE:
                    case Integers.SHORT:
                    case Integers.INT:
                    case Integers.LONG:
                        Integers.write(out, row, i, kinds[i]);
                        break;
                    case KIND_DOUBLE:
                        out.ascii(Double.toString(row.getDouble(i)));
                        break;
                    case KIND_FLOAT:
                        out.ascii(Float.toString(row.getFloat(i)));
                        break;
                    case KIND_DECIMAL:
                        decimal(out, row.getDecimal(i, precision[i], scale[i]));
                        break;
                    case KIND_DATE_DAYS:
                        date(out, LocalDate.ofEpochDay(row.getInt(i)), true);
                        break;
                    case KIND_TS_UTC:
                        timestamp(out, row.getLong(i), null);
                        break;
                    case KIND_TS_LOCAL:
                        timestamp(out, row.getLong(i), zone);
                        break;
                    case KIND_TS_NTZ:
                        timestamp(out, row.getLong(i), ZoneOffset.UTC);
                        break;
                    case KIND_BINARY:
                        hex(out, row.getBinary(i));
                        break;
                    default:
                        throw new IllegalStateException("unknown column kind '" + kinds[i] + "'");
                }
            }
            out.put((byte) '\n');
        }

        private static void quoted(Bytes out, UTF8String s) {
            byte[] bytes = s.getBytes();
            out.ensure(bytes.length + 2);
            out.buf[out.size++] = '"';
            for (byte b : bytes) {
                if (b == '"') {
                    out.put((byte) '"');
                    out.put(b);
                } else {
                    out.ensure(1);
                    out.buf[out.size++] = b;
                }
            }
            out.put((byte) '"');
        }

        private static void decimal(Bytes out, Decimal d) {
            int scale = d.scale();
            if (d.precision() > 18) {
                out.ascii(d.toJavaBigDecimal().toPlainString());
                return;
            }
            long unscaled = d.toUnscaledLong();
            if (unscaled < 0) {
                out.put((byte) '-');
                unscaled = -unscaled; // |unscaled| < 10^18: no overflow
            }
            long pow = 1;
            for (int k = 0; k < scale; k++) {
                pow *= 10;
            }
            out.digits(unscaled / pow, 1);
            if (scale > 0) {
                out.put((byte) '.');
                out.digits(unscaled % pow, scale);
            }
        }

        /** Microseconds: UTC with "+00" (zone null), else the wall time at that offset or zone. */
        private static void timestamp(Bytes out, long micros, ZoneId zone) {
            LocalDateTime t = Timestamps.wall(micros, zone == null ? ZoneOffset.UTC : Timestamps.offset(micros, zone));
            date(out, t.toLocalDate(), false);
            out.put((byte) ' ');
            out.time(t.getHour(), t.getMinute(), t.getSecond());
            out.put((byte) '.');
            out.digits(t.getNano() / 1000, 6);
            if (zone == null) {
                out.ascii("+00");
            }
            if (t.getYear() <= 0) {
                out.ascii(" BC");
            }
        }

        /** yyyy-mm-dd; ISO year 0 is 1 BC, -1 is 2 BC (PostgreSQL has no year 0). */
        private static void date(Bytes out, LocalDate d, boolean era) {
            int year = d.getYear();
            out.date(year <= 0 ? 1 - year : year, d.getMonthValue(), d.getDayOfMonth());
            if (era && year <= 0) {
                out.ascii(" BC");
            }
        }

        private static void hex(Bytes out, byte[] bytes) {
            out.ensure(2 + 2 * bytes.length);
            out.buf[out.size++] = '\\';
            out.buf[out.size++] = 'x';
            for (byte b : bytes) {
                out.buf[out.size++] = HEX[(b >> 4) & 0xf];
                out.buf[out.size++] = HEX[b & 0xf];
            }
        }
    }
}
