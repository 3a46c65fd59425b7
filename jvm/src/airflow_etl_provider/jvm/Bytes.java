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

    /** A non-negative number, zero-padded to width digits. */
    void digits(long value, int width) {
        int n = 1;
        for (long v = value; v >= 10; v /= 10) {
            n++;
        }
        int pad = Math.max(0, width - n);
        ensure(pad + n);
        for (int k = 0; k < pad; k++) {
            buf[size++] = '0';
        }
        int end = size + n;
        for (int k = end - 1; k >= size; k--) {
            buf[k] = (byte) ('0' + (value % 10));
            value /= 10;
        }
        size = end;
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
