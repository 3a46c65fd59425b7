/*
 * The Kafka dead-letter publisher on the JVM side of Spark (DeadLetterHook.publish_dataframe on a classic
 * session: embedded local[*] or a standalone cluster, with kafka-clients on the classpath).
 *
 * Why it exists (benchmarks/bench_dlq_kafka.py): in a Python worker, building one envelope message costs
 * ~8 us and confluent-kafka's produce() of it with its 12 headers ~9 us, ~2.6 CPU-s per 100k envelopes,
 * so one partition tops out near 40k envelopes/s and two partitions on two cores no higher (measured: 38-39k/s
 * with 1 or 2 publishers, the cores saturated). Here the rows never leave the JVM: Spark's internal rows
 * (UTF-8 bytes, micros, days, unscaled decimals) are written straight into the envelope's JSON and sent with
 * Kafka's Java producer.
 *
 * Contract with the driver (airflow_etl_provider/hooks/dead_letter_jvm.py), which computes everything that is
 * the same for the whole publish:
 *   - valueParts: the envelope JSON cut around its six per-row fields (envelope_id, error_class,
 *     error_message, failed_rules, record, record_key, in this order): 7 byte arrays;
 *   - identityPrefix: the canonical JSON of [version, pipeline, run, stage, null, ; the id is the SHA-256 hex
 *     of identityPrefix + record JSON + "]" (the record's JSON here is the canonical one: sorted keys, no
 *     spaces, no floats);
 *   - record columns: indexes into the row in sorted-name order, with their JSON names and a kind letter;
 *   - the error, error-class and failed-rules columns (-1 when absent), the key columns, the headers that do
 *     not change.
 * The messages (Envelopes.java) are byte for byte those of the Python path
 * (airflow_etl_provider/executor/arrow_envelopes.py); tests/integration/test_dead_letter_jvm.py compares them.
 *
 * Delivery: idempotent producer, acks=all; a message counts as delivered on its acknowledgement. Messages
 * whose delivery fails (after the producer's own retries, within delivery.timeout.ms), and every later one
 * once the producer cannot even reach the broker, are written to a JSON Lines spool file in spoolDir, one
 * envelope per line, exactly as the Python path spools them; the status names it. Nothing is dropped.
 *
 * The driver hands the plan over as one JSON document and gets the statuses back as one JSON array (two py4j
 * round trips in all). One status per partition: a JSON object with partition, delivered, spooled, spool_path, error, location,
 * batch_latencies_s (first send to last acknowledgement of each run of batchSize messages) and timings_s
 * (producer_start, build, send, flush, total: wall seconds; task_cpu: the task thread's CPU seconds).
 */
package airflow_etl_provider.jvm;

import java.io.FileOutputStream;
import java.io.IOException;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.spark.TaskContext;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.Decimal;
import org.apache.spark.sql.types.DecimalType;

public final class KafkaDeadLetterPublisher {

    /** A string column: a JSON string. */
    public static final char KIND_STRING = 's';
    /** byte, short, int, long: a JSON number (resolved to an Integers width on the driver). */
    public static final char KIND_INTEGER = 'i';
    /** boolean: true / false (its key text is Python's True / False). */
    public static final char KIND_BOOLEAN = 'B';
    /** decimal of scale 0-6: its plain text as a JSON string (what str(Decimal) writes). */
    public static final char KIND_DECIMAL = 'n';
    /** date: "YYYY-MM-DD". */
    public static final char KIND_DATE = 'D';
    /** timestamp (an instant): ISO-8601 in the session time zone with its offset, as datetime.isoformat(). */
    public static final char KIND_TIMESTAMP = 'T';
    /** timestamp_ntz: ISO-8601 without offset. */
    public static final char KIND_TIMESTAMP_NTZ = 'L';
    /** binary: base64 (standard alphabet, padded) as a JSON string. */
    public static final char KIND_BINARY = 'b';

    private KafkaDeadLetterPublisher() {
    }

    /** Everything the executors need, computed on the driver (serialized with the task). */
    public static final class Plan implements Serializable {
        private static final long serialVersionUID = 1L;
        String topic;
        Map<String, String> producerConfig;
        byte[][] valueParts;
        byte[] identityPrefix;
        int[] recordIndexes;
        byte[][] recordNames; // '"name":' as JSON, the first without a leading comma
        char[] kinds;
        int[] precision;
        int[] scale;
        int errorIndex;
        int classIndex;
        int rulesIndex; // an array<string> column of failed quality rules, -1: none
        String rulesHeader;
        int[] keyIndexes;
        byte[] pipelineKey;
        byte[] defaultErrorJson;
        byte[] defaultErrorHeader;
        String defaultClass;
        String[] constantHeaderNames;
        byte[][] constantHeaderValues;
        String classHeader;
        String messageHeader;
        String idHeader;
        int maxErrorChars;
        int maxHeaderChars;
        String sessionZone;
        String spoolDir;
        String batchPrefix;
        int batchSize;
    }

    /**
     * Publish every row of {@code rows} as a dead letter, one task per partition.
     *
     * <p>Everything else comes in one JSON document (one py4j call instead of one per list element: the driver
     * used to spend ~30 ms per publish in ~190 py4j round trips); byte strings are base64:
     * {@code topic}, {@code producer_config} (an object of strings), {@code value_parts} (7), {@code
     * identity_prefix}, {@code record_indexes}, {@code record_names}, {@code kinds} (a string, one letter per
     * record column), {@code error_index}, {@code class_index}, {@code rules_index} (-1: none), {@code key_indexes}, {@code
     * pipeline_key}, {@code default_error}, {@code default_class}, {@code constant_header_names}, {@code
     * constant_header_values}, {@code header_prefix}, {@code max_error_chars}, {@code max_header_chars},
     * {@code session_zone}, {@code spool_dir}, {@code batch_prefix}, {@code batch_size}.
     *
     * @return a JSON array: one status object per partition
     */
    public static String publish(Dataset<Row> rows, String planJson) throws IOException {
        ObjectMapper mapper = new ObjectMapper();
        JsonNode doc = mapper.readTree(planJson);
        int[] recordIndexes = ints(doc, "record_indexes");
        String kinds = field(doc, "kinds").asText();
        List<String> recordNames = texts(doc, "record_names");
        List<byte[]> valueParts = blobs(doc, "value_parts");
        if (valueParts.size() != 7) {
            throw new IllegalArgumentException("value_parts must hold 7 parts, not " + valueParts.size());
        }
        if (kinds.length() != recordIndexes.length || recordNames.size() != recordIndexes.length) {
            throw new IllegalArgumentException("one kind and one name per record column");
        }
        DataType[] types = new DataType[rows.schema().fields().length];
        for (int i = 0; i < types.length; i++) {
            types[i] = rows.schema().fields()[i].dataType();
        }
        Plan plan = new Plan();
        plan.topic = field(doc, "topic").asText();
        plan.producerConfig = mapper.convertValue(field(doc, "producer_config"),
                new TypeReference<java.util.HashMap<String, String>>() { });
        plan.valueParts = valueParts.toArray(new byte[0][]);
        plan.identityPrefix = blob(field(doc, "identity_prefix"));
        plan.recordIndexes = recordIndexes;
        plan.kinds = kinds.toCharArray();
        plan.recordNames = new byte[recordIndexes.length][];
        plan.precision = new int[recordIndexes.length];
        plan.scale = new int[recordIndexes.length];
        for (int c = 0; c < recordIndexes.length; c++) {
            Bytes name = new Bytes(64);
            if (c > 0) {
                name.put((byte) ',');
            }
            Json.string(name, recordNames.get(c).getBytes(StandardCharsets.UTF_8));
            name.put((byte) ':');
            plan.recordNames[c] = name.toArray();
            DataType type = types[recordIndexes[c]];
            if (plan.kinds[c] == KIND_INTEGER) { // resolved once per column, not per value
                plan.kinds[c] = Integers.width(type, recordNames.get(c));
            }
            if (type instanceof DecimalType) {
                plan.precision[c] = ((DecimalType) type).precision();
                plan.scale[c] = ((DecimalType) type).scale();
            }
        }
        plan.errorIndex = field(doc, "error_index").asInt();
        plan.classIndex = field(doc, "class_index").asInt();
        plan.rulesIndex = field(doc, "rules_index").asInt();
        plan.keyIndexes = ints(doc, "key_indexes");
        plan.pipelineKey = blob(field(doc, "pipeline_key"));
        int maxErrorChars = field(doc, "max_error_chars").asInt();
        int maxHeaderChars = field(doc, "max_header_chars").asInt();
        byte[] defaultErrorBytes = field(doc, "default_error").asText().getBytes(StandardCharsets.UTF_8);
        Bytes defaultJson = new Bytes(64);
        Json.string(defaultJson, Json.prefix(defaultErrorBytes, maxErrorChars));
        plan.defaultErrorJson = defaultJson.toArray();
        plan.defaultErrorHeader = Json.prefix(defaultErrorBytes, maxHeaderChars);
        plan.defaultClass = field(doc, "default_class").asText();
        plan.constantHeaderNames = texts(doc, "constant_header_names").toArray(new String[0]);
        plan.constantHeaderValues = blobs(doc, "constant_header_values").toArray(new byte[0][]);
        if (plan.constantHeaderNames.length != plan.constantHeaderValues.length) {
            throw new IllegalArgumentException("one value per constant header");
        }
        String headerPrefix = field(doc, "header_prefix").asText();
        plan.classHeader = headerPrefix + "class.name";
        plan.messageHeader = headerPrefix + "exception.message";
        plan.idHeader = headerPrefix + "envelope.id";
        plan.rulesHeader = headerPrefix + "rules";
        plan.maxErrorChars = maxErrorChars;
        plan.maxHeaderChars = maxHeaderChars;
        plan.sessionZone = field(doc, "session_zone").asText();
        plan.spoolDir = field(doc, "spool_dir").asText();
        plan.batchPrefix = field(doc, "batch_prefix").asText();
        plan.batchSize = field(doc, "batch_size").asInt();
        String[] statuses = new Publisher(plan).run(rows, String.class); // one job, no closure cleaning
        return "[" + String.join(",", statuses) + "]";
    }

    private static JsonNode field(JsonNode doc, String name) {
        JsonNode node = doc.get(name);
        if (node == null || node.isNull()) {
            throw new IllegalArgumentException("the publish plan has no '" + name + "'");
        }
        return node;
    }

    private static int[] ints(JsonNode doc, String name) {
        JsonNode array = field(doc, name);
        int[] out = new int[array.size()];
        for (int k = 0; k < out.length; k++) {
            out[k] = array.get(k).asInt();
        }
        return out;
    }

    private static List<String> texts(JsonNode doc, String name) {
        List<String> out = new ArrayList<>();
        field(doc, name).forEach(node -> out.add(node.asText()));
        return out;
    }

    private static byte[] blob(JsonNode node) {
        return java.util.Base64.getDecoder().decode(node.asText());
    }

    private static List<byte[]> blobs(JsonNode doc, String name) {
        List<byte[]> out = new ArrayList<>();
        field(doc, name).forEach(node -> out.add(blob(node)));
        return out;
    }

    /** The per-partition function (serialized to the executors). */
    static final class Publisher extends PartitionJob<String> {
        private static final long serialVersionUID = 1L;
        private final Plan plan;

        Publisher(Plan plan) {
            this.plan = plan;
        }

        /** Send one message, or spool it when the producer cannot (a method of its own, called per row: the JIT
         *  compiles it once, instead of recompiling the partition's loop on each stack replacement). */
        private void send(KafkaProducer<byte[], byte[]> producer, Envelopes.Message m, Delivery delivery, Spool spool)
                throws IOException {
            if (producer == null || delivery.broken()) {
                spool.write(m.value); // the broker is unreachable: no point waiting per message
                return;
            }
            ProducerRecord<byte[], byte[]> record =
                    new ProducerRecord<>(plan.topic, null, m.key, m.value, java.util.Arrays.asList(m.headers));
            int batch = delivery.sent();
            byte[] value = m.value;
            try {
                producer.send(record, (meta, err) -> delivery.done(batch, err, value));
            } catch (RuntimeException err) { // no metadata within max.block.ms, a producer in a fatal state
                delivery.fail(err, true);
                delivery.done(batch, err, value);
            }
        }

        @Override
        String call(TaskContext ctx, scala.collection.Iterator<InternalRow> rows)
                throws IOException, java.security.NoSuchAlgorithmException {
            return publish(ctx.partitionId(), rows); // the spool's IOException fails the task (Spark retries it)
        }

        /** Publish one partition's rows; returns its status (a JSON object). */
        String publish(int partition, scala.collection.Iterator<InternalRow> input)
                throws IOException, java.security.NoSuchAlgorithmException {
            Envelopes envelopes = new Envelopes(plan);
            Delivery delivery = new Delivery(plan.batchSize);
            // Spark's executor class loader holds kafka-clients; the producer looks its classes up by name
            // through the context class loader, which must be that one.
            Thread thread = Thread.currentThread();
            ClassLoader previous = thread.getContextClassLoader();
            thread.setContextClassLoader(KafkaDeadLetterPublisher.class.getClassLoader());
            KafkaProducer<byte[], byte[]> producer = null;
            Spool spool = new Spool(plan.spoolDir, plan.batchPrefix + "-p" + String.format("%05d", partition));
            long t0 = System.nanoTime();
            java.lang.management.ThreadMXBean threads = java.lang.management.ManagementFactory.getThreadMXBean();
            long cpu0 = threads.getCurrentThreadCpuTime();
            long buildNs = 0;
            long sendNs = 0;
            long startNs = 0;
            long flushNs = 0;
            boolean completed = false; // every row sent and flushed: else the producer is not reused
            try {
                try {
                    producer = Producers.get(plan.producerConfig);
                } catch (RuntimeException err) { // a setting the producer refuses: everything goes to the spool
                    delivery.fail(err, true);
                }
                startNs = System.nanoTime() - t0;
                while (input.hasNext()) {
                    long b0 = System.nanoTime();
                    Envelopes.Message m = envelopes.build(input.next());
                    long b1 = System.nanoTime();
                    buildNs += b1 - b0;
                    send(producer, m, delivery, spool);
                    sendNs += System.nanoTime() - b1;
                }
                long f0 = System.nanoTime();
                if (producer != null) {
                    producer.flush();
                }
                flushNs = System.nanoTime() - f0;
                completed = true;
            } catch (Throwable err) { // the task fails (Spark retries it): close what was spooled so far
                try {
                    spool.close();
                } catch (IOException closing) {
                    err.addSuppressed(closing);
                }
                throw err;
            } finally {
                if (producer != null && (delivery.firstError() != null || !completed)) {
                    Producers.discard(plan.producerConfig, producer); // never reuse one that failed a delivery
                }
                thread.setContextClassLoader(previous);
            }
            // every callback has run (flush): what failed goes to the spool too
            for (byte[] value : delivery.failed) {
                spool.write(value);
            }
            spool.close();
            long delivered = delivery.delivered.get();
            StringBuilder s = new StringBuilder(256);
            s.append("{\"partition\":").append(partition)
                    .append(",\"delivered\":").append(delivered)
                    .append(",\"spooled\":").append(spool.count)
                    .append(",\"spool_path\":").append(Json.text(spool.path))
                    .append(",\"error\":").append(Json.text(delivery.firstError()))
                    .append(",\"location\":").append(delivered > 0 ? Json.text("kafka://" + plan.topic) : "null")
                    .append(",\"timings_s\":{\"producer_start\":").append(startNs / 1e9)
                    .append(",\"build\":").append(buildNs / 1e9)
                    .append(",\"send\":").append(sendNs / 1e9)
                    .append(",\"flush\":").append(flushNs / 1e9)
                    .append(",\"total\":").append((System.nanoTime() - t0) / 1e9)
                    .append(",\"task_cpu\":").append((threads.getCurrentThreadCpuTime() - cpu0) / 1e9)
                    .append("},\"batch_latencies_s\":[");
            List<Double> latencies = delivery.latencies();
            for (int k = 0; k < latencies.size(); k++) {
                if (k > 0) {
                    s.append(',');
                }
                s.append(latencies.get(k));
            }
            s.append("]}");
            return s.toString();
        }
    }

    /**
     * The producers of this JVM, one per configuration and task thread, kept between publishes: a producer's
     * start (metadata, the idempotent producer's id) is paid once per executor thread, not per partition and
     * publish (benchmarks/bench_dlq_kafka.py --rows 2000, warm: 0.23 s -> 0.18 s per publish, medians of 5).
     * Not one shared by the task threads: the Java producer appends (and compresses) under a lock per topic
     * partition, so tasks sharing one would wait for each other. One that failed a delivery is closed and
     * replaced; those of task threads that ended are closed.
     */
    static final class Producers {
        private static final java.util.concurrent.ConcurrentHashMap<List<Object>, KafkaProducer<byte[], byte[]>>
                CACHE = new java.util.concurrent.ConcurrentHashMap<>();

        private static List<Object> key(Map<String, String> config) {
            return java.util.Arrays.asList(new java.util.TreeMap<>(config), Thread.currentThread());
        }

        static KafkaProducer<byte[], byte[]> get(Map<String, String> config) {
            // An executor's idle task threads end (Spark's pool keeps them 60 s): close their producers.
            for (List<Object> key : CACHE.keySet()) {
                if (!((Thread) key.get(1)).isAlive()) {
                    KafkaProducer<byte[], byte[]> gone = CACHE.remove(key);
                    if (gone != null) {
                        gone.close(java.time.Duration.ZERO); // their publishes flushed before they returned
                    }
                }
            }
            return CACHE.computeIfAbsent(key(config), key -> {
                Properties props = new Properties();
                props.putAll(config);
                return new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer());
            });
        }

        static void discard(Map<String, String> config, KafkaProducer<byte[], byte[]> producer) {
            if (CACHE.remove(key(config), producer)) {
                producer.close(java.time.Duration.ZERO); // what it still holds failed: its callbacks ran
            }
        }
    }

    /** Delivery accounting, shared with the producer's I/O thread (callbacks). */
    static final class Delivery {
        final AtomicLong delivered = new AtomicLong();
        final ConcurrentLinkedQueue<byte[]> failed = new ConcurrentLinkedQueue<>();
        private final int batchSize;
        private final List<AtomicInteger> pending = Collections.synchronizedList(new ArrayList<>());
        private final List<Long> started = Collections.synchronizedList(new ArrayList<>());
        private final List<Long> finished = Collections.synchronizedList(new ArrayList<>());
        private volatile String error;
        private volatile boolean broken;
        private int sentCount;

        Delivery(int batchSize) {
            this.batchSize = Math.max(1, batchSize);
        }

        /** A message is about to be sent; returns its batch. */
        synchronized int sent() {
            int batch = sentCount / batchSize;
            if (sentCount % batchSize == 0) {
                pending.add(new AtomicInteger());
                started.add(System.nanoTime());
                finished.add(0L);
            }
            pending.get(batch).incrementAndGet();
            sentCount++;
            return batch;
        }

        /** A message's outcome (the producer's I/O thread, or the task's thread when send() threw). */
        void done(int batch, Exception err, byte[] value) {
            if (err == null) {
                delivered.incrementAndGet();
            } else {
                failed.add(value);
                // not delivered within delivery.timeout.ms: the broker is gone, later messages would wait as long
                fail(err, err instanceof org.apache.kafka.common.errors.TimeoutException);
            }
            if (pending.get(batch).decrementAndGet() == 0 && batchComplete(batch)) {
                finished.set(batch, System.nanoTime());
            }
        }

        private synchronized boolean batchComplete(int batch) {
            return (batch + 1) * (long) batchSize <= sentCount;
        }

        /** Record an error; fatal: send no more, spool the rest of the partition. */
        void fail(Exception err, boolean fatal) {
            if (error == null) {
                error = err.getClass().getName() + ": " + err.getMessage();
            }
            if (fatal) {
                broken = true;
            }
        }

        boolean broken() {
            return broken;
        }

        String firstError() {
            return error;
        }

        List<Double> latencies() {
            List<Double> out = new ArrayList<>();
            long now = System.nanoTime();
            for (int k = 0; k < started.size(); k++) {
                long end = finished.get(k) != 0L ? finished.get(k) : now;
                out.add((end - started.get(k)) / 1e9);
            }
            return out;
        }
    }

    /** A JSON Lines spool file, opened at the first envelope written to it. */
    static final class Spool {
        final String dir;
        final String prefix;
        String path;
        long count;
        private FileOutputStream out;

        Spool(String dir, String prefix) {
            this.dir = dir;
            this.prefix = prefix.replaceAll("[^A-Za-z0-9._-]", "_");
        }

        void write(byte[] value) throws IOException {
            if (out == null) {
                Path directory = Paths.get(dir);
                Files.createDirectories(directory);
                Path file = directory.resolve("spool-" + prefix + "-jvm-"
                        + UUID.randomUUID().toString().replace("-", "").substring(0, 8) + ".jsonl");
                out = new FileOutputStream(file.toFile());
                path = file.toString();
            }
            out.write(value);
            out.write('\n');
            count++;
        }

        void close() throws IOException {
            if (out != null) {
                out.flush();
                out.getFD().sync();
                out.close();
            }
        }
    }
}
