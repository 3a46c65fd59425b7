/*
 * COPY ... (FORMAT binary) tuples from Spark's internal rows, for PostgresCopyStager.
 *
 * Why (benchmarks/bench_load_postgres.py): PostgreSQL parses CSV text value by value (numeric_in, timestamptz_in,
 * int8in ...); the binary format hands it the values themselves. psql, 1M benchmark orders into the UNLOGGED
 * staging table: COPY of the CSV 2.7-3.6 s, of the same rows in binary 1.7-1.9 s. On the writer's side binary
 * is cheaper too: a timestamp is one subtraction instead of calendar fields and text.
 *
 * The format (https://www.postgresql.org/docs/current/sql-copy.html, "Binary Format"): a signature and two
 * zero int32s, then per row an int16 field count and per field an int32 length (-1: NULL) and the value in its
 * type's send/recv form, then an int16 -1. All big-endian. The driver (jvm_copy.py, core/sql.py
 * binary_copy_type) uses this only when every staging column's type is the one the value's form is for:
 *   string -> text / character varying: its UTF-8 bytes (PostgreSQL validates them, as for CSV);
 *   tinyint, smallint -> smallint (2 bytes); int -> integer (4); bigint -> bigint (8); boolean -> boolean (1);
 *   double -> double precision, float -> real: the IEEE bits; binary -> bytea: the bytes;
 *   decimal -> numeric: base-10000 digits (numeric_send's form);
 *   date -> date: days since 2000-01-01; timestamp -> timestamptz: microseconds since 2000-01-01 UTC;
 *   timestamp -> timestamp: the session time zone's wall time, like the CSV; timestamp_ntz -> timestamp.
 * tests/integration/test_jvm_copy.py stages the same edge values as CSV (both writers) and binary and compares
 * PostgreSQL's text of every row.
 */
package airflow_etl_provider.jvm;

import java.time.ZoneId;

import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.types.Decimal;
import org.apache.spark.unsafe.Platform;
import org.apache.spark.unsafe.types.UTF8String;

final class CopyBinary {
    /** The file header: signature, flags 0, header extension length 0. */
    static final byte[] HEADER = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', (byte) 0xff, '\r', '\n', 0, 0, 0, 0, 0, 0, 0, 0, 0};
    /** The file trailer: a field count of -1. */
    static final byte[] TRAILER = {(byte) 0xff, (byte) 0xff};
    /** 2000-01-01T00:00Z, PostgreSQL's epoch, in microseconds and days since 1970-01-01. */
    static final long PG_EPOCH_MICROS = 946_684_800_000_000L;
    static final int PG_EPOCH_DAYS = 10_957;
    private static final int NUMERIC_NEG = 0x4000;

    private final char[] kinds;
    private final int[] precision;
    private final int[] scale;
    private final ZoneId zone;
    private byte[] digits = new byte[48];
    private byte[] groups = new byte[64];

    /**
     * @param kinds resolved kinds (PostgresCopyStager.Renderer's: integers by width, booleans as 'B')
     * @param precision decimal precision per column (0 elsewhere)
     * @param scale decimal scale per column
     * @param zone the session time zone (KIND_TS_LOCAL)
     */
    CopyBinary(char[] kinds, int[] precision, int[] scale, ZoneId zone) {
        this.kinds = kinds;
        this.precision = precision;
        this.scale = scale;
        this.zone = zone;
    }

    void row(Bytes out, InternalRow row) {
        out.ensure(2);
        short2(out, kinds.length);
        for (int i = 0; i < kinds.length; i++) {
            out.ensure(12);
            if (row.isNullAt(i)) {
                int4(out, -1);
                continue;
            }
            switch (kinds[i]) {
                case PostgresCopyStager.KIND_STRING:
                    string(out, row.getUTF8String(i));
                    break;
                case PostgresCopyStager.Renderer.BOOLEAN:
                    int4(out, 1);
                    out.buf[out.size++] = (byte) (row.getBoolean(i) ? 1 : 0);
                    break;
                case Integers.BYTE:
                    int4(out, 2);
                    short2(out, row.getByte(i));
                    break;
                case Integers.SHORT:
                    int4(out, 2);
                    short2(out, row.getShort(i));
                    break;
                case Integers.INT:
                    int4(out, 4);
                    int4(out, row.getInt(i));
                    break;
                case Integers.LONG:
                    int4(out, 8);
                    int8(out, row.getLong(i));
                    break;
                case PostgresCopyStager.KIND_DOUBLE:
                    int4(out, 8);
                    int8(out, Double.doubleToRawLongBits(row.getDouble(i)));
                    break;
                case PostgresCopyStager.KIND_FLOAT:
                    int4(out, 4);
                    int4(out, Float.floatToRawIntBits(row.getFloat(i)));
                    break;
                case PostgresCopyStager.KIND_DECIMAL:
                    numeric(out, row.getDecimal(i, precision[i], scale[i]));
                    break;
                case PostgresCopyStager.KIND_DATE_DAYS:
                    int4(out, 4);
                    int4(out, row.getInt(i) - PG_EPOCH_DAYS);
                    break;
                case PostgresCopyStager.KIND_TS_UTC:
                case PostgresCopyStager.KIND_TS_NTZ:
                    int4(out, 8);
                    int8(out, row.getLong(i) - PG_EPOCH_MICROS);
                    break;
                case PostgresCopyStager.KIND_TS_LOCAL:
                    long micros = row.getLong(i);
                    int4(out, 8);
                    int8(out, micros + Timestamps.offset(micros, zone).getTotalSeconds() * 1_000_000L
                            - PG_EPOCH_MICROS);
                    break;
                case PostgresCopyStager.KIND_BINARY:
                    byte[] bytes = row.getBinary(i);
                    int4(out, bytes.length);
                    out.put(bytes);
                    break;
                default:
                    throw new IllegalStateException("unknown column kind '" + kinds[i] + "'");
            }
        }
    }

    private static void string(Bytes out, UTF8String s) {
        int n = s.numBytes();
        out.ensure(4 + n);
        int4(out, n);
        s.writeToMemory(out.buf, Platform.BYTE_ARRAY_OFFSET + out.size);
        out.size += n;
    }

    /**
     * numeric_recv's form: int16 ndigits, int16 weight, int16 sign, int16 dscale, then ndigits base-10000
     * digits, the first of weight 10000^weight. The groups are aligned on the decimal point; leading and
     * trailing zero groups are allowed (PostgreSQL strips them), dscale is the column's scale.
     */
    private void numeric(Bytes out, Decimal d) {
        boolean negative;
        int n; // decimal digits of |unscaled| in this.digits, most significant first (none for zero)
        if (d.precision() <= 18) {
            long u = d.toUnscaledLong();
            negative = u < 0;
            n = longDigits(negative ? -u : u); // |u| < 10^18: no overflow
        } else {
            java.math.BigInteger u = d.toJavaBigDecimal().unscaledValue();
            negative = u.signum() < 0;
            String text = u.signum() == 0 ? "" : u.abs().toString();
            n = text.length();
            if (digits.length < n) {
                digits = new byte[n];
            }
            for (int k = 0; k < n; k++) {
                digits[k] = (byte) (text.charAt(k) - '0');
            }
        }
        int s = d.scale();
        int intDigits = Math.max(0, n - s);
        int intGroups = (intDigits + 3) / 4;
        int fracGroups = (s + 3) / 4;
        int count = intGroups + fracGroups;
        int len = count * 4;
        if (groups.length < len) {
            groups = new byte[len];
        }
        java.util.Arrays.fill(groups, 0, len, (byte) 0);
        // the digit of weight 10^0 sits just left of position intGroups * 4
        System.arraycopy(digits, 0, groups, intGroups * 4 - (n - s), n);
        out.ensure(12 + 2 * count);
        int4(out, 8 + 2 * count);
        short2(out, count);
        short2(out, intGroups - 1);
        short2(out, negative ? NUMERIC_NEG : 0);
        short2(out, s);
        for (int g = 0; g < count; g++) {
            int k = g * 4;
            short2(out, groups[k] * 1000 + groups[k + 1] * 100 + groups[k + 2] * 10 + groups[k + 3]);
        }
    }

    /** The decimal digits (values 0-9) of v >= 0 into this.digits; returns how many (0 for zero). */
    private int longDigits(long v) {
        int n = 0;
        for (long x = v; x > 0; x /= 10) {
            n++;
        }
        for (int k = n - 1; k >= 0; k--) {
            digits[k] = (byte) (v % 10);
            v /= 10;
        }
        return n;
    }

    private static void short2(Bytes out, int v) {
        out.buf[out.size++] = (byte) (v >>> 8);
        out.buf[out.size++] = (byte) v;
    }

    private static void int4(Bytes out, int v) {
        out.buf[out.size++] = (byte) (v >>> 24);
        out.buf[out.size++] = (byte) (v >>> 16);
        out.buf[out.size++] = (byte) (v >>> 8);
        out.buf[out.size++] = (byte) v;
    }

    private static void int8(Bytes out, long v) {
        int4(out, (int) (v >>> 32));
        int4(out, (int) v);
    }
}
