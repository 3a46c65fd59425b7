/*
 * JSON text as Python's json.dumps(ensure_ascii=False) and orjson write it, into a Bytes buffer.
 */
package airflow_etl_provider.jvm;

import java.nio.charset.StandardCharsets;

/** JSON text as Python's json.dumps(ensure_ascii=False) and orjson write it. */
final class Json {
    static final byte[] NULL = "null".getBytes(StandardCharsets.US_ASCII);
    private static final byte[] HEX = "0123456789abcdef".getBytes(StandardCharsets.US_ASCII);

    /** A JSON string of UTF-8 bytes: ", \ and control characters escaped, everything else as is. */
    static void string(Bytes out, byte[] utf8) {
        string(out, utf8, 0, utf8.length);
    }

    static void string(Bytes out, byte[] utf8, int from, int to) {
        out.ensure(6 * (to - from) + 2); // the longest escape (backslash u 00XX) is 6 bytes
        byte[] buf = out.buf;
        int n = out.size;
        buf[n++] = '"';
        for (int k = from; k < to; k++) {
            byte b = utf8[k];
            if (b >= 0x20 && b != '"' && b != '\\' || b < 0) { // b < 0: a byte of a multi-byte character
                buf[n++] = b;
                continue;
            }
            buf[n++] = '\\';
            switch (b) {
                case '"':
                case '\\':
                    buf[n++] = b;
                    break;
                case '\n':
                    buf[n++] = 'n';
                    break;
                case '\r':
                    buf[n++] = 'r';
                    break;
                case '\t':
                    buf[n++] = 't';
                    break;
                case '\b':
                    buf[n++] = 'b';
                    break;
                case '\f':
                    buf[n++] = 'f';
                    break;
                default:
                    buf[n++] = 'u';
                    buf[n++] = '0';
                    buf[n++] = '0';
                    buf[n++] = HEX[(b >> 4) & 0xf];
                    buf[n++] = HEX[b & 0xf];
            }
        }
        buf[n++] = '"';
        out.size = n;
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
