/*
 * Kafka's own floor for bench_dlq_kafka.py: the fastest the Java producer sends *already built* messages on this
 * machine, with the settings and the threads our JVM dead-letter writer uses.
 *
 * Reads every message of a source topic (the envelopes ours published in its last round: key, value, headers)
 * into memory, then for each of warmup + rounds publishes all of them to a fresh topic (created beforehand by
 * the caller, every partition led, as ours' topics are: an idempotent producer sending to a partition the broker
 * is still creating can have its first batch refused out of order until delivery.timeout.ms): one producer per
 * thread (as ours keeps one per executor thread), each thread sending a contiguous slice (as ours sends one
 * Spark partition), timed from the first send to the last thread's flush() returning (every message
 * acknowledged, acks=all). Nothing is built or read while timed: what is left is the producer's send(), its
 * record writing and compression, its I/O thread and the broker.
 *
 * A single-file program (JEP 330): java -cp <kafka-clients and its compression jars> KafkaFloor.java
 *   <producer.properties> <source topic> <topic prefix> <threads> <warmup> <rounds>
 * Prints one "round k <seconds> send=<s> io=<s> jit=<s>" line per round (the CPU seconds its sending threads, the
 * producers' I/O threads and the JIT compiler threads ran during it, from /proc/self/task). The topics are
 * <topic prefix>-0, -1, ...; the caller creates them and deletes them after its last measurement (a deleted
 * topic's logs are flushed while the next round runs). Exits 1 when a message is not delivered or the source
 * topic cannot be read completely.
 */

import java.io.FileInputStream;
import java.io.InputStream;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class KafkaFloor {
    record Message(byte[] key, byte[] value, Header[] headers) {}

    static List<Message> readAll(String bootstrap, String topic) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("enable.auto.commit", "false");
        props.put("max.partition.fetch.bytes", String.valueOf(8 << 20));
        List<Message> out = new ArrayList<>();
        try (KafkaConsumer<byte[], byte[]> consumer =
                     new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> partitions = new ArrayList<>();
            for (PartitionInfo p : consumer.partitionsFor(topic, Duration.ofSeconds(30))) {
                partitions.add(new TopicPartition(topic, p.partition()));
            }
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            Map<TopicPartition, Long> end = consumer.endOffsets(partitions, Duration.ofSeconds(30));
            long expected = 0;
            for (TopicPartition tp : partitions) {
                expected += end.get(tp) - consumer.beginningOffsets(List.of(tp)).get(tp);
            }
            long deadline = System.nanoTime() + 120_000_000_000L;
            while (out.size() < expected && System.nanoTime() < deadline) {
                ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofSeconds(1));
                for (ConsumerRecord<byte[], byte[]> r : records) {
                    out.add(new Message(r.key(), r.value(), r.headers().toArray()));
                }
            }
            if (out.size() != expected) {
                throw new IllegalStateException("read " + out.size() + " of the " + expected + " messages of " + topic);
            }
        }
        return out;
    }

    /** CPU seconds of this JVM's threads by role, from /proc/self/task (Linux; empty elsewhere). */
    static Map<String, Double> threadCpu() {
        Map<String, Double> out = new HashMap<>();
        java.io.File[] tasks = new java.io.File("/proc/self/task").listFiles();
        if (tasks == null) {
            return out;
        }
        double tick = 100.0; // USER_HZ: 100 on Linux
        for (java.io.File task : tasks) {
            String stat;
            try {
                stat = new String(java.nio.file.Files.readAllBytes(new java.io.File(task, "stat").toPath()));
            } catch (java.io.IOException gone) { // a thread that ended meanwhile
                continue;
            }
            String name = stat.substring(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
            String[] fields = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
            double cpu = (Long.parseLong(fields[11]) + Long.parseLong(fields[12])) / tick;
            String role = name.startsWith("pool-") ? "send" : name.startsWith("kafka-producer") ? "io"
                    : name.startsWith("C1 ") || name.startsWith("C2 ") ? "jit" : "other";
            out.merge(role, cpu, Double::sum);
        }
        return out;
    }

    public static void main(String[] args) throws Exception {
        Properties producerProps = new Properties();
        try (InputStream in = new FileInputStream(args[0])) {
            producerProps.load(in);
        }
        String source = args[1];
        String prefix = args[2];
        int threads = Integer.parseInt(args[3]);
        int warmup = Integer.parseInt(args[4]);
        int rounds = Integer.parseInt(args[5]);
        String bootstrap = producerProps.getProperty("bootstrap.servers");

        List<Message> messages = readAll(bootstrap, source);
        System.out.println("read " + messages.size() + " messages of " + source);
        List<KafkaProducer<byte[], byte[]>> producers = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            producers.add(new KafkaProducer<>(producerProps, new ByteArraySerializer(), new ByteArraySerializer()));
        }
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        int status = 0;
        try {
            for (int k = 0; k < warmup + rounds; k++) {
                String topic = prefix + "-" + k;
                AtomicLong delivered = new AtomicLong();
                AtomicReference<Exception> failure = new AtomicReference<>();
                int per = (messages.size() + threads - 1) / threads;
                Map<String, Double> cpu0 = threadCpu();
                long t0 = System.nanoTime();
                List<Future<?>> running = new ArrayList<>();
                for (int t = 0; t < threads; t++) {
                    int from = Math.min(messages.size(), t * per);
                    int to = Math.min(messages.size(), from + per);
                    KafkaProducer<byte[], byte[]> producer = producers.get(t);
                    running.add(pool.submit(() -> {
                        for (int i = from; i < to; i++) {
                            Message m = messages.get(i);
                            producer.send(new ProducerRecord<>(topic, null, m.key(), m.value(), Arrays.asList(m.headers())),
                                    (meta, err) -> {
                                        if (err == null) {
                                            delivered.incrementAndGet();
                                        } else {
                                            failure.compareAndSet(null, err);
                                        }
                                    });
                        }
                        producer.flush();
                        return null;
                    }));
                }
                for (Future<?> f : running) {
                    f.get();
                }
                double seconds = (System.nanoTime() - t0) / 1e9;
                if (failure.get() != null || delivered.get() != messages.size()) {
                    System.out.println("FAIL: round " + (k + 1) + ": " + delivered.get() + " of " + messages.size()
                            + " delivered, first error: " + failure.get());
                    status = 1;
                    break;
                }
                Map<String, Double> cpu1 = threadCpu();
                StringBuilder line = new StringBuilder("round " + (k + 1) + " " + seconds);
                for (String role : List.of("send", "io", "jit")) {
                    double ran = cpu1.getOrDefault(role, 0.0) - cpu0.getOrDefault(role, 0.0);
                    line.append(' ').append(role).append('=').append(String.format("%.2f", ran));
                }
                System.out.println(line);
            }
        } finally {
            pool.shutdownNow();
            for (KafkaProducer<byte[], byte[]> producer : producers) {
                producer.close(Duration.ofSeconds(5));
            }
        }
        System.exit(status);
    }
}
