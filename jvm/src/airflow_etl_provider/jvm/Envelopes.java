/*
 * The messages of the Kafka dead-letter publisher (KafkaDeadLetterPublisher): each failed row's key, envelope JSON
 * and headers, byte for byte those of the Python path (airflow_etl_provider/executor/arrow_envelopes.py).
 */
package airflow_etl_provider.jvm;

import static airflow_etl_provider.jvm.KafkaDeadLetterPublisher.KIND_BINARY;
import static airflow_etl_provider.jvm.KafkaDeadLetterPublisher.KIND_BOOLEAN;
import static airflow_etl_provider.jvm.KafkaDeadLetterPublisher.KIND_DATE;
import static airflow_etl_provider.jvm.KafkaDeadLetterPublisher.KIND_DECIMAL;
import static airflow_etl_provider.jvm.KafkaDeadLetterPublisher.KIND_STRING;
import static airflow_etl_provider.jvm.KafkaDeadLetterPublisher.KIND_TIMESTAMP;
import static airflow_etl_provider.jvm.KafkaDeadLetterPublisher.KIND_TIMESTAMP_NTZ;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.ZoneId;
import java.time.ZoneOffset;
import java.util.Base64;

import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.util.ArrayData;
import org.apache.spark.sql.types.Decimal;
import org.apache.spark.unsafe.Platform;
import org.apache.spark.unsafe.types.UTF8String;

/** Builds the key, value and headers of each row's message. */
final class Envelopes {
    private static final byte[] HEX = "0123456789abcdef".getBytes(StandardCharsets.US_ASCII);
    private final KafkaDeadLetterPublisher.Plan plan;
    private final ZoneId zone;
    private final MessageDigest sha256;
    private final Bytes record = new Bytes(1024);
    private final Bytes value = new Bytes(4096);
    private final Bytes key = new Bytes(64);
    private final Bytes raw = new Bytes(256);
    private final Bytes rules = new Bytes(256);
    private final Bytes rulesText = new Bytes(256);
    private final java.util.HashMap<UTF8String, ErrorClass> classes = new java.util.HashMap<>();
    private final ErrorClass defaultClass;
    private final Header[] constantHeaders;

    static final class Message {
        byte[] key;
        byte[] value;
        Header[] headers;
    }

    Envelopes(KafkaDeadLetterPublisher.Plan plan) throws NoSuchAlgorithmException {
        this.plan = plan;
        this.zone = ZoneId.of(plan.sessionZone);
        this.sha256 = MessageDigest.getInstance("SHA-256");
        defaultClass = new ErrorClass(plan.defaultClass, plan.classHeader);
        constantHeaders = new Header[plan.constantHeaderNames.length];
        for (int k = 0; k < constantHeaders.length; k++) {
            constantHeaders[k] = new RecordHeader(plan.constantHeaderNames[k], plan.constantHeaderValues[k]);
        }
    }

    /** An error class's JSON string and header (the same few per publish: kept by name). */
    static final class ErrorClass {
        final byte[] json;
        final Header header;

        ErrorClass(String name, String headerName) {
            byte[] bytes = name.getBytes(StandardCharsets.UTF_8);
            Bytes text = new Bytes(bytes.length + 8);
            Json.string(text, bytes);
            json = text.toArray();
            header = new RecordHeader(headerName, bytes);
        }
    }

    Message build(InternalRow row) {
        // the record, canonical JSON (sorted keys, compact)
        record.size = 0;
        record.put((byte) '{');
        for (int c = 0; c < plan.recordIndexes.length; c++) {
            record.put(plan.recordNames[c]);
            value(record, row, c, true);
        }
        record.put((byte) '}');
        // the envelope id: sha256 of [version, pipeline, run, stage, null, record]
        sha256.update(plan.identityPrefix); // digest() below leaves it reset for the next row
        sha256.update(record.buf, 0, record.size);
        sha256.update((byte) ']');
        byte[] digest = sha256.digest();
        byte[] id = new byte[64];
        for (int k = 0; k < 32; k++) {
            id[2 * k] = HEX[(digest[k] >> 4) & 0xf];
            id[2 * k + 1] = HEX[digest[k] & 0xf];
        }
        // the record key: the key columns' text joined with "|", null when one is null
        byte[] recordKey = recordKey(row);
        // error message and class
        byte[] messageHeader;
        int messageEnd = -1;
        byte[] message = null;
        UTF8String error = plan.errorIndex >= 0 && !row.isNullAt(plan.errorIndex)
                ? row.getUTF8String(plan.errorIndex) : null;
        if (error == null || error.numBytes() == 0) {
            messageHeader = plan.defaultErrorHeader;
        } else {
            message = error.getBytes();
            messageEnd = Json.prefixEnd(message, plan.maxErrorChars);
            messageHeader = Json.prefix(message, plan.maxHeaderChars);
        }
        ErrorClass errorClass;
        UTF8String className = plan.classIndex >= 0 && !row.isNullAt(plan.classIndex)
                ? row.getUTF8String(plan.classIndex) : null;
        if (className == null || className.numBytes() == 0) {
            errorClass = defaultClass;
        } else {
            errorClass = classes.get(className);
            if (errorClass == null) { // a copy: the row's string may point into a buffer Spark reuses
                errorClass = new ErrorClass(className.toString(), plan.classHeader);
                classes.put(className.clone(), errorClass);
            }
        }
        // failed quality rules: a JSON array of the names, and the names joined with "," as a header when any
        boolean anyRules = rules(row);
        // the value: the template with the six per-row fields in sorted order
        byte[][] parts = plan.valueParts;
        value.size = 0;
        value.put(parts[0]);
        value.put(id);
        value.put(parts[1]);
        value.put(errorClass.json);
        value.put(parts[2]);
        if (message == null) {
            value.put(plan.defaultErrorJson);
        } else {
            Json.string(value, message, 0, messageEnd);
        }
        value.put(parts[3]);
        value.put(rules.buf, 0, rules.size);
        value.put(parts[4]);
        value.put(record.buf, 0, record.size);
        value.put(parts[5]);
        if (recordKey == null) {
            value.put(Json.NULL);
        } else {
            Json.string(value, recordKey);
        }
        value.put(parts[6]);

        Message m = new Message();
        m.key = recordKey != null ? recordKey : plan.pipelineKey;
        m.value = value.toArray();
        Header[] headers = new Header[constantHeaders.length + (anyRules ? 4 : 3)];
        headers[0] = errorClass.header;
        headers[1] = new RecordHeader(plan.messageHeader, messageHeader);
        System.arraycopy(constantHeaders, 0, headers, 2, constantHeaders.length);
        if (anyRules) {
            headers[headers.length - 2] = new RecordHeader(plan.rulesHeader, rulesText.toArray());
        }
        headers[headers.length - 1] = new RecordHeader(plan.idHeader, id);
        m.headers = headers;
        return m;
    }

    /** The row's failed rules into rules (JSON) and rulesText (joined with ","); whether there are any. A null
     *  or empty array is [] and no header, as on the Python path. */
    private boolean rules(InternalRow row) {
        rules.size = 0;
        rulesText.size = 0;
        rules.put((byte) '[');
        ArrayData names = plan.rulesIndex < 0 || row.isNullAt(plan.rulesIndex) ? null : row.getArray(plan.rulesIndex);
        int n = names == null ? 0 : names.numElements();
        for (int k = 0; k < n; k++) {
            if (names.isNullAt(k)) { // the Python path cannot join a null name either
                throw new IllegalArgumentException("a null rule name in the failed-rules column");
            }
            byte[] name = names.getUTF8String(k).getBytes();
            if (k > 0) {
                rules.put((byte) ',');
                rulesText.put((byte) ',');
            }
            Json.string(rules, name);
            rulesText.put(name);
        }
        rules.put((byte) ']');
        return n > 0;
    }

    private byte[] recordKey(InternalRow row) {
        if (plan.keyIndexes.length == 0) {
            return null;
        }
        key.size = 0;
        for (int k = 0; k < plan.keyIndexes.length; k++) {
            int c = plan.keyIndexes[k];
            if (c < 0 || row.isNullAt(plan.recordIndexes[c])) {
                return null;
            }
            if (k > 0) {
                key.put((byte) '|');
            }
            value(key, row, c, false);
        }
        return key.toArray();
    }

    /** Record column c of the row: as JSON (json=true) or as the key's text (Python's str of the value). */
    private void value(Bytes out, InternalRow row, int c, boolean json) {
        int i = plan.recordIndexes[c];
        if (row.isNullAt(i)) {
            out.put(Json.NULL);
            return;
        }
        switch (plan.kinds[c]) {
            case KIND_STRING:
                UTF8String text = row.getUTF8String(i);
                if (json) { // copied into a reused buffer (no array per value), then escaped from there
                    int n = text.numBytes();
                    raw.size = 0;
                    raw.ensure(n);
                    text.writeToMemory(raw.buf, Platform.BYTE_ARRAY_OFFSET);
                    Json.string(out, raw.buf, 0, n);
                } else {
                    int n = text.numBytes();
                    out.ensure(n);
                    text.writeToMemory(out.buf, Platform.BYTE_ARRAY_OFFSET + out.size);
                    out.size += n;
                }
                break;
            case Integers.BYTE:
            case Integers.SHORT:
            case Integers.INT:
            case Integers.LONG:
                Integers.write(out, row, i, plan.kinds[c]);
                break;
            case KIND_BOOLEAN:
                boolean b = row.getBoolean(i);
                out.ascii(json ? (b ? "true" : "false") : (b ? "True" : "False"));
                break;
            default:
                int start = out.size;
                if (json) {
                    out.put((byte) '"');
                }
                text(out, row, c, i);
                if (json) { // the texts below never need escaping
                    out.put((byte) '"');
                }
                assert out.size > start;
        }
    }

    private void text(Bytes out, InternalRow row, int c, int i) {
        switch (plan.kinds[c]) {
            case KIND_DECIMAL:
                Decimal d = row.getDecimal(i, plan.precision[c], plan.scale[c]);
                if (plan.precision[c] <= Decimal.MAX_LONG_DIGITS()) { // held as an unscaled long
                    out.decimal(d.toUnscaledLong(), plan.scale[c]);
                } else {
                    out.ascii(d.toJavaBigDecimal().toPlainString());
                }
                break;
            case KIND_DATE:
                date(out, LocalDate.ofEpochDay(row.getInt(i)));
                break;
            case KIND_TIMESTAMP:
                timestamp(out, row.getLong(i), zone, true);
                break;
            case KIND_TIMESTAMP_NTZ:
                timestamp(out, row.getLong(i), ZoneOffset.UTC, false);
                break;
            case KIND_BINARY:
                out.ascii(Base64.getEncoder().encodeToString(row.getBinary(i)));
                break;
            default:
                throw new IllegalStateException("unknown column kind '" + plan.kinds[c] + "'");
        }
    }

    private static void date(Bytes out, LocalDate d) {
        out.date(d.getYear(), d.getMonthValue(), d.getDayOfMonth());
    }

    /** datetime.isoformat(): microseconds only when not 0, the offset as +HH:MM[:SS] when withOffset. */
    private static void timestamp(Bytes out, long micros, ZoneId zone, boolean withOffset) {
        ZoneOffset offset = Timestamps.offset(micros, zone);
        LocalDateTime t = Timestamps.wall(micros, offset);
        date(out, t.toLocalDate());
        out.put((byte) 'T');
        out.time(t.getHour(), t.getMinute(), t.getSecond());
        int fraction = t.getNano() / 1000;
        if (fraction != 0) {
            out.put((byte) '.');
            out.digits(fraction, 6);
        }
        if (withOffset) {
            int total = offset.getTotalSeconds();
            out.put((byte) (total < 0 ? '-' : '+'));
            total = Math.abs(total);
            out.digits(total / 3600, 2);
            out.put((byte) ':');
            out.digits(total / 60 % 60, 2);
            if (total % 60 != 0) {
                out.put((byte) ':');
                out.digits(total % 60, 2);
            }
        }
    }
}
