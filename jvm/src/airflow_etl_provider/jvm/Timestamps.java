/*
 * Spark's timestamps (microseconds since the epoch) as wall times, for the JVM writers (the COPY stager and the
 * dead-letter publisher), which then write them in their own formats.
 */
package airflow_etl_provider.jvm;

import java.time.Instant;
import java.time.LocalDateTime;
import java.time.ZoneId;
import java.time.ZoneOffset;

/** Wall times of microsecond timestamps. */
final class Timestamps {
    private Timestamps() {
    }

    /** The offset of a zone at an instant (a fixed offset needs no rules lookup). */
    static ZoneOffset offset(long micros, ZoneId zone) {
        return zone instanceof ZoneOffset ? (ZoneOffset) zone
                : zone.getRules().getOffset(Instant.ofEpochSecond(Math.floorDiv(micros, 1_000_000L)));
    }

    /** The wall time of microseconds since the epoch at an offset (microsecond precision, floor for negatives). */
    static LocalDateTime wall(long micros, ZoneOffset offset) {
        return LocalDateTime.ofEpochSecond(Math.floorDiv(micros, 1_000_000L),
                (int) Math.floorMod(micros, 1_000_000L) * 1000, offset);
    }
}
