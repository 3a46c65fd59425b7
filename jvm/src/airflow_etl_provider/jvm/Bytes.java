/*
 * A growable byte buffer shared by the JVM writers (no synchronisation, unlike ByteArrayOutputStream).
 */
package airflow_etl_provider.jvm;

/** A growable byte buffer. */
final class Bytes {
    byte[] buf;
    int size;

    Bytes(int capacity) {
        buf = new byte[capacity];
    }

    void ensure(int more) {
        if (size + more > buf.length) {
            buf = java.util.Arrays.copyOf(buf, Math.max(buf.length * 2, size + more));
        }
    }

    void put(byte b) {
        ensure(1);
        buf[size++] = b;
    }

    void put(byte[] bytes) {
        put(bytes, 0, bytes.length);
    }

    void put(byte[] bytes, int from, int length) {
        ensure(length);
        System.arraycopy(bytes, from, buf, size, length);
        size += length;
    }

    void ascii(String s) {
        int n = s.length();
        ensure(n);
        for (int k = 0; k < n; k++) {
            buf[size++] = (byte) s.charAt(k);
        }
    }

    byte[] toArray() {
        return java.util.Arrays.copyOf(buf, size);
    }

    /** A non-negative number, zero-padded to width digits. Two digits per division, from a table (a DLQ task
     *  thread writes ~10 numbers a row for a timestamp and the integers: JFR had the digit-per-division loop at
     *  ~5 % of its samples). */
    void digits(long value, int width) {
        int n = 1;
        while (n < POW10.length && value >= POW10[n]) {
            n++;
        }
        int pad = Math.max(0, width - n);
        ensure(pad + n);
        for (int k = 0; k < pad; k++) {
            buf[size++] = '0';
        }
        int k = size + n;
        size = k;
        while (value >= 100) {
            int pair = (int) (value % 100) << 1;
            value /= 100;
            buf[--k] = PAIRS[pair + 1];
            buf[--k] = PAIRS[pair];
        }
        if (value >= 10) {
            int pair = (int) value << 1;
            buf[--k] = PAIRS[pair + 1];
            buf[--k] = PAIRS[pair];
        } else {
            buf[--k] = (byte) ('0' + value);
        }
    }

    /** "00" "01" ... "99": the two digits of i at 2 * i. */
    private static final byte[] PAIRS = new byte[200];

    static {
        for (int i = 0; i < 100; i++) {
            PAIRS[2 * i] = (byte) ('0' + i / 10);
            PAIRS[2 * i + 1] = (byte) ('0' + i % 10);
        }
    }

    void number(long value) {
        if (value < 0) {
            if (value == Long.MIN_VALUE) {
                ascii(Long.toString(value));
                return;
            }
            put((byte) '-');
            value = -value;
        }
        digits(value, 1);
    }

    private static final long[] POW10 = {1L, 10L, 100L, 1_000L, 10_000L, 100_000L, 1_000_000L, 10_000_000L,
        100_000_000L, 1_000_000_000L, 10_000_000_000L, 100_000_000_000L, 1_000_000_000_000L,
        10_000_000_000_000L, 100_000_000_000_000L, 1_000_000_000_000_000L, 10_000_000_000_000_000L,
        100_000_000_000_000_000L, 1_000_000_000_000_000_000L};

    /** unscaled / 10^scale as BigDecimal.toPlainString() writes it, for a decimal of precision <= 18 (|unscaled|
     *  < 10^18, 0 <= scale <= 18): the integer part, then exactly scale fraction digits. Without a BigDecimal and
     *  its StringBuilder per value (JFR: ~5 % of a DLQ task thread's samples for one decimal column). */
    void decimal(long unscaled, int scale) {
        if (scale < 0 || scale >= POW10.length) {
            throw new IllegalArgumentException("decimal scale " + scale + " is outside 0.." + (POW10.length - 1));
        }
        if (scale == 0) {
            number(unscaled);
            return;
        }
        if (unscaled < 0) {
            put((byte) '-');
            unscaled = -unscaled;
        }
        long pow = POW10[scale];
        digits(unscaled / pow, 1);
        put((byte) '.');
        digits(unscaled % pow, scale);
    }

    /** YYYY-MM-DD (year as given, at least 4 digits; the era, if any, is the caller's). */
    void date(int year, int month, int day) {
        triple(year, 4, (byte) '-', month, day);
    }

    /** HH:MM:SS. */
    void time(int hour, int minute, int second) {
        triple(hour, 2, (byte) ':', minute, second);
    }

    /** first (at least firstWidth digits), then two 2-digit fields, each after the separator. */
    private void triple(int first, int firstWidth, byte separator, int second, int third) {
        digits(first, firstWidth);
        put(separator);
        digits(second, 2);
        put(separator);
        digits(third, 2);
    }
}
