/*
 * JSON text as Python's json.dumps(ensure_ascii=False) and orjson write it, into a Bytes buffer.
 */
package airflow_etl_provider.jvm;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;

/** JSON text as Python's json.dumps(ensure_ascii=False) and orjson write it. */
final class Json {
    static final byte[] NULL = "null".getBytes(StandardCharsets.US_ASCII);
    private static final byte[] HEX = "0123456789abcdef".getBytes(StandardCharsets.US_ASCII);
    /** A byte array read and written eight bytes at a time (any order: only whether a byte matches counts). */
    private static final VarHandle WORDS = MethodHandles.byteArrayViewVarHandle(long[].class, ByteOrder.LITTLE_ENDIAN);
    private static final long ONES = 0x0101010101010101L;
    private static final long HIGH_BITS = 0x8080808080808080L;
    /** The letter after the backslash of a two-byte escape, by byte (up to the backslash, 0x5C); 0: written as
     *  backslash u 00XX. */
    private static final byte[] SHORT_ESCAPE = new byte['\\' + 1];

    static {
        SHORT_ESCAPE['"'] = '"';
        SHORT_ESCAPE['\\'] = '\\';
        SHORT_ESCAPE['\n'] = 'n';
        SHORT_ESCAPE['\r'] = 'r';
        SHORT_ESCAPE['\t'] = 't';
        SHORT_ESCAPE['\b'] = 'b';
        SHORT_ESCAPE['\f'] = 'f';
    }

    /** A JSON string of UTF-8 bytes: ", \ and control characters escaped, everything else as is. */
    static void string(Bytes out, byte[] utf8) {
        string(out, utf8, 0, utf8.length);
    }

    static void string(Bytes out, byte[] utf8, int from, int to) {
        out.ensure(6 * (to - from) + 2); // the longest escape (backslash u 00XX) is 6 bytes
        byte[] buf = out.buf;
        int n = out.size;
        buf[n++] = '"';
        int k = from;
        // Eight bytes at a time: a word none of whose bytes needs escaping (most of an error message or a value)
        // is copied as one long; in a word that has one, the bytes before it are, then it is escaped and the next
        // word starts right after it. JFR of a DLQ task thread: the byte-by-byte loop this replaces was ~13 % of
        // its samples; 265 -> ~125 ns for a 225-byte not-null error message (bench_dlq_kafka.py, its docstring).
        for (int last = to - 8; k <= last; ) {
            long word = (long) WORDS.get(utf8, k);
            long matches = escapes(word);
            WORDS.set(buf, n, word); // room: 6 bytes reserved per input byte, 8 more input bytes to come
            if (matches == 0) {
                n += 8;
                k += 8;
            } else {
                int clean = Long.numberOfTrailingZeros(matches) >>> 3; // little-endian: byte 0 is utf8[k]
                n = put(buf, n + clean, utf8[k + clean]);
                k += clean + 1;
            }
        }
        for (; k < to; k++) {
            n = put(buf, n, utf8[k]);
        }
        buf[n++] = '"';
        out.size = n;
    }

    /** The high bit of each byte of word (little-endian) that needs escaping: below 0x20 (a control character;
     *  bytes of multi-byte characters, 0x80 and up, are not), a quote or a backslash. The lowest bit set is always
     *  a byte that does (a borrow only starts at one; higher bits may be false: Anderson's "has less than" and
     *  "has zero byte" words, Bit Twiddling Hacks). */
    static long escapes(long word) {
        long control = (word - 0x2020202020202020L) & ~word;
        long quote = word ^ 0x2222222222222222L;
        long backslash = word ^ 0x5C5C5C5C5C5C5C5CL;
        return (control | ((quote - ONES) & ~quote) | ((backslash - ONES) & ~backslash)) & HIGH_BITS;
    }

    /** One byte of a JSON string at buf[n], escaped if it must be; returns the next position. */
    private static int put(byte[] buf, int n, byte b) {
        if (b >= 0x20 && b != '"' && b != '\\' || b < 0) { // b < 0: a byte of a multi-byte character
            buf[n++] = b;
            return n;
        }
        buf[n++] = '\\';
        byte letter = SHORT_ESCAPE[b]; // b: a control character, a quote or a backslash here
        if (letter != 0) {
            buf[n++] = letter;
        } else {
            buf[n++] = 'u';
            buf[n++] = '0';
            buf[n++] = '0';
            buf[n++] = HEX[(b >> 4) & 0xf];
            buf[n++] = HEX[b & 0xf];
        }
        return n;
    }

    /** The end (exclusive) of the first maxChars characters (code points) of UTF-8 bytes, as Python's str
     *  slicing counts them. */
    static int prefixEnd(byte[] utf8, int maxChars) {
        if (utf8.length <= maxChars) {
            return utf8.length; // fewer bytes than characters allowed
        }
        int chars = 0;
        for (int k = 0; k < utf8.length; k++) {
            if ((utf8[k] & 0xC0) != 0x80) { // the first byte of a character
                if (chars == maxChars) {
                    return k;
                }
                chars++;
            }
        }
        return utf8.length;
    }

    /** The first maxChars characters (code points) of UTF-8 bytes. */
    static byte[] prefix(byte[] utf8, int maxChars) {
        int end = prefixEnd(utf8, maxChars);
        return end == utf8.length ? utf8 : java.util.Arrays.copyOf(utf8, end);
    }

    /** A JSON string or null, for the status. */
    static String text(String s) {
        if (s == null) {
            return "null";
        }
        Bytes out = new Bytes(s.length() + 8);
        string(out, s.getBytes(StandardCharsets.UTF_8));
        return new String(out.buf, 0, out.size, StandardCharsets.UTF_8);
    }
}
