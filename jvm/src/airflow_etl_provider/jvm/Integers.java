/*
 * Spark's integer columns (byte, short, int, long) in the JVM writers (the COPY stager and the dead-letter
 * publisher): the width is resolved once per column on the driver, each value is then written as its decimal
 * text with no boxing.
 */
package airflow_etl_provider.jvm;

import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.types.DataType;

/** The integer widths, as kind letters that no writer uses for anything else. */
final class Integers {
    static final char BYTE = '1';
    static final char SHORT = '2';
    static final char INT = '4';
    static final char LONG = '8';

    private Integers() {
    }

    /**
     * The width of an integer column.
     *
     * @param type the column's Spark type
     * @param name the column, for the error
     * @return BYTE, SHORT, INT or LONG
     * @throws IllegalArgumentException when the type is not an integer
     */
    static char width(DataType type, String name) {
        switch (type.typeName()) {
            case "byte":
                return BYTE;
            case "short":
                return SHORT;
            case "integer":
                return INT;
            case "long":
                return LONG;
            default:
                throw new IllegalArgumentException("column " + name + " (" + type.typeName() + ") is not an integer");
        }
    }

    /** Field i of the row (not null), of the given width, as its decimal text. */
    static void write(Bytes out, InternalRow row, int i, char width) {
        switch (width) {
            case BYTE:
                out.number(row.getByte(i));
                break;
            case SHORT:
                out.number(row.getShort(i));
                break;
            case INT:
                out.number(row.getInt(i));
                break;
            case LONG:
                out.number(row.getLong(i));
                break;
            default:
                throw new IllegalStateException("unknown integer width '" + width + "'");
        }
    }
}
