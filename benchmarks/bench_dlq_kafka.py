"""Dead letters to Kafka: our batched publisher vs the one-synchronous-send-per-record design.

What is compared
    *Ours*: the real path of a load's rejected rows, ``DeadLetterHook.publish_dataframe`` (``stage="load"``,
    ``key_columns=["order_id"]``) of a cached DataFrame of the failed rows (original columns + ``_etl_error`` +
    ``_etl_error_class``; ``--partitions`` 2, this machine's cores) in an embedded ``local[*]`` session built by
    ``SparkSessionHook``, as the operators build theirs. **Timed: the whole call**, from the Spark job's start to the
    last ``acks=all`` confirmation of every envelope (idempotent producer, byte-identical messages: key, envelope
    JSON, 12 headers) and the status rows back on the driver. Each writer of ``dead_letter.writer`` is measured:
    ``jvm`` (ours, what ``auto`` picks here: ``KafkaDeadLetterPublisher`` in Spark's JVM, Kafka's Java producer)
    and ``python`` (the Python workers' ``mapInArrow`` publisher, confluent-kafka), ``--warmup`` publishes (the
    first one *cold*: a fresh JVM's first publish, JIT and producer start included) then ``--rounds`` measured
    ones, each to a fresh topic; ours = the median of the measured rounds of the first writer. One batch latency
    = first send to last acknowledgement of 1,000 messages (``batch_latencies_s`` of the status rows).

    *Peer* (the seed design a user would otherwise write): for each row, ``build_envelope`` (then the row's
    error class) and a ``confluent_kafka.Producer`` with the same reliability settings
    (``enable.idempotence=true``, ``acks=all``) that calls ``produce()`` then ``flush()`` -- waits for that
    one delivery before the next. Same key, value and headers. Its latency is per record (build included).
    It runs on ``--peer-rows`` (default 10,000) rows from a Python list, without Spark; its rows/s is
    extrapolated to ``--rows`` (``seconds = rows / peer_rows_per_s``), and the output says so.

    *Kafka's floor* (for information, no goal; ``--skip-floor`` leaves it out): what Kafka's own Java producer
    needs to send the very same messages when nothing has to be built. ``kafka_floor/KafkaFloor.java`` (run
    with ``java``, the session's kafka-clients jar and pyspark's codec jars) reads the messages of ours' last
    round back into memory (not timed), then sends them ``--warmup`` + ``--rounds`` times, each to a fresh
    topic (created beforehand like ours', every partition led), from ``--partitions`` threads with one producer each and exactly the Java settings our JVM writer
    uses (``sink_java_config``: idempotent, ``acks=all``, lz4, 1 MiB batches, 10 ms linger), timed from the
    first send to the last ``flush()``. Printed as ``bench dlq_kafka_vs_kafka_floor``, with each round's CPU
    seconds of its sending, I/O and JIT threads next to ours'. It tells how much of ours is Kafka itself: the
    issue assumed the broker on loopback "takes far more than" 100k envelopes/s; for these messages (1 KiB of
    JSON and 12 headers, ~1.8 KiB each) on these two cores it does not by much.

    Why: a DLQ publisher must keep up with the failures of a big load (100k rejected rows must not take
    minutes) while still confirming every envelope (``acks=all``) before the task succeeds. Goals (issue
    #15, P7): >= 20x the peer, >= 100,000 envelopes/s; and this benchmark's own guard since the first DLQ
    work (not one of #15's goals): p99 batch latency < 100 ms. The verdict line says "goal met" / "goal NOT
    met" for #15's two goals and "ok" / "MISSED" for the guard, separately (before d1c56dd one verdict
    covered all three: the "goal NOT met" / "p99 missed" entries below for runs that met both rate goals are the
    guard's).

    Each run starts from a quiet machine (``os.sync()``, then up to 60 s waiting for 85 % idle CPUs) and uses
    fresh topics (3 partitions, like the stack's default, one per round), all deleted at the end unless
    ``--keep-topics``. Afterwards an independent consumer (fresh group, earliest) reads the last round's topic of
    each writer back: count and keys (no loss, no duplicates), and for 2,000 random rows the value and headers
    must be byte for byte what ``build_envelope`` + ``to_json`` + ``kafka_key`` + ``kafka_headers`` give (with
    the message's own timestamp), or the script exits 1. No timing is asserted: the goal check prints
    "goal met" / "goal NOT met".

Results (2026-12-07, 08:36: ed58d65, the DLQ path unchanged)
    184,867 envelopes/s, 89.8x the peer (48.6 s extrapolated for 100,000), Kafka's floor: ours 0.88x its time;
    p99 batch latency 150.3 ms: #15's goals met, the benchmark's own guard missed.

Results (2026-12-07, 06:15-06:17: 802ae9d, the DLQ path unchanged since 36abb48)
    Two more runs of the one command on a quieter host: 165,433 / 152,917 envelopes/s (74.4x / 63.9x the
    peer; Kafka's floor 162,954 / 157,123 msg/s: ours 0.99x / 1.03x its time), p99 batch latency 106.1 /
    57.8 ms: the issue's goals (>= 20x, >= 100k/s) in both, the benchmark's own p99 guard in the second.
    From a fresh clone of 802ae9d right after its CI (06:55): 120,438 envelopes/s, 53.1x, Kafka's floor
    150,545 msg/s (ours 1.25x its time), p99 358.6 ms. Nine runs today: the rate in eight, 20x in all nine.

Results (2026-12-07, morning: 36abb48, the same 2-core machine)
    Changes since the early runs, none of them meant to move the rate: the hooks look the JVM classes up by
    their whole name (one py4j request instead of one per dotted part and its ``ClassNotFoundException``),
    ``Json.put``'s escapes from a table, ``PartitionJob`` rethrowing a writer's exception unchanged.

    The one command, six runs (03:15-03:34):

    ==========================  ========  ========  ========  ========  ========  ========
    ..                          03:15     03:17     03:19     03:30     03:32     03:33
    ==========================  ========  ========  ========  ========  ========  ========
    ours (JVM writer), warm/s   121,387   89,450    135,195   145,706   169,373   181,819
    ours vs the peer            64.3x     52.7x     71.4x     75.2x     92.6x     81.7x
    ours p99 batch latency      106.8 ms  79.1 ms   246.2 ms  60.0 ms   59.7 ms   142.7 ms
    Kafka's floor, warm/s       129,727   149,050   149,959   154,229   254,048   253,092
    ours' time / the floor's    1.07x     1.67x     1.11x     1.06x     1.50x     1.39x
    CPU canary before / after   .110/.113 .181/.119 .110/.162 .113/.117 .114/.116 .209/.123
    cold (first publish)        3.18 s    3.82 s    3.51 s    2.43 s    2.92 s    2.36 s
    ==========================  ========  ========  ========  ========  ========  ========

    The issue's two goals (>= 20x, >= 100k/s): 20x in all six, the rate in five; the miss (89,450/s) is the
    run that started on the slowest machine of the six (canary 0.181 s: the same loop 65 % slower than in the
    others), its task threads running 0.78-1.28 CPU-s per measured round against 0.46-0.70 in the last three runs,
    same code.
    The benchmark's own p99 guard (< 100 ms) held in three: a round in which the whole machine stalls
    (round 7 of the 03:19 run: 270 ms) puts five or more of its ~100 batches above 100 ms, enough for the p99
    of 500. Checked and ruled out as the stalls' cause: the broker's GC (four young collections, 53 ms in
    all, during a whole jvm-only run, ``jstat -gcutil``), the page cache's writeback (``vmstat``: no
    sustained block output during measured rounds), the Spark JVM's code cache (``jcmd Compiler.codecache``:
    23 of 240 MB used, never flushed). During a round the two cores run 85-92 % user time (``vmstat``); the
    broker takes ~0.3 CPU-s per 100k envelopes.
    More warm-up rounds do not make it steadier: ``--writers jvm --skip-peer --skip-floor --warmup 12
    --rounds 5`` four times: 119,350 / 85,646 / 149,748 / 200,436 (``--warmup 10 --rounds 3``) envelopes/s,
    the slow one with a phase of rounds at 77-90k/s and p99 280-450 ms from round 10 on (a busy host),
    the fast one reaching 207k/s in a round. ``--warmup`` stays 3.

Results (2026-12-07, early: 1d1585a, the same 2-core machine)
    JFR of the task threads (``settings=profile``, warm rounds 5-10 of a jvm-only run, 346 samples): Kafka's
    producer 54.6 % -- of which ``Utils.utf8Length`` 15.9 % and ``DefaultRecord.sizeOf`` 9.5 % self, the UTF-8
    length of the 12 header names, computed three times per record (``KafkaProducer.doSend``'s size check,
    ``MemoryRecordsBuilder.hasRoomFor``, ``DefaultRecord.writeTo``); Spark's cached scan 17.9 %; ours 27.2 %:
    ``Json.string`` 13.0 % self (the byte-by-byte escaping loop), ``Envelopes`` 8.7 %, ``Bytes`` 5.2 %
    (``digits`` 4.9 %). 1d1585a: ``Json.string`` copies eight bytes at a time and escapes only the bytes that
    need it (an exact SWAR test), ``Bytes.digits`` writes two digits per division from a table. Microbenchmark
    (a warm JVM): the benchmark's 225-byte not-null error message 265 -> ~125 ns, a row's timestamp and integers
    135 -> ~95 ns; the output checked against the previous code on 2M random strings (every byte value, escapes
    at every offset) and 3M numbers and widths (identical), and by a new integration test (escapes and
    multi-byte characters at every offset 0-17 of a word, JVM vs Python bytes). End to end the gain is inside
    the host's noise: three alternating pairs, ``--writers jvm --skip-peer --skip-floor``, old 104,313 /
    105,946 / 98,594 vs new 130,299 / 104,526 / 103,642 envelopes/s (task threads' CPU per measured round:
    old 0.78-0.98 s, new 0.59-1.01 s).

    The one command, three consecutive runs (00:13-00:17): ours **120,291 / 98,299 / 108,474** envelopes/s,
    44.1x / 35.9x / 40.3x the peer, p99 98.7 / 60.4 / 58.0 ms; Kafka's floor 182,194 / 177,056 / 190,113
    messages/s (ours 1.51 / 1.80 / 1.75x its time). Every goal in 2 of 3; the second missed the rate by 1.7 %.
    Before the change, the same command at 23:51: 98,164/s (missed by 1.8 %), 32.2x, p99 70.3 ms, floor
    176,789/s (1.80x).

    Where ours' JIT goes in "warm" rounds (a ``--warmup 12 --rounds 4`` run with ``-XX:+LogCompilation`` and a
    class-load log): nothing is loaded per round but 1-6 reflection accessors (py4j), so no class hierarchy
    changes undo compiled code; round 12's ~1,100 "not entrant" events are the code cache sweeper turning C1
    versions already replaced by C2 ones into zombies, not recompilations. C2 still compiles 0.13-1.46 s per
    round in rounds 9-17: Kafka's producer (``RecordAccumulator.partitionReady`` 0.92 s in round 12,
    ``Sender.runOnce`` 0.90 s in round 15, ``Sender$SenderMetrics`` 0.26 s in round 16) and Java serialization
    (``ObjectInputStream.readOrdinaryObject`` 0.19-0.27 s) -- code that gets hot only after many publishes. The
    JIT threads ran 0.4-0.6 s per measured round (the floor's 0.11-0.17 s). Exceptions (JFR
    ``jdk.JavaExceptionThrow``): ~820 per round, all on the driver's py4j thread (``ClassNotFoundException``
    while py4j resolves ``spark._jvm.a.b.C`` names import by import), none on the task threads.

Results (2026-12-06, night: 7ad99cd + Kafka's floor, the same 2-core machine)
    The one command, five consecutive runs (21:49-21:57):

    ==========================  ========  ========  ========  ========  ========
    ..                          21:49     21:50     21:55     21:56     21:57
    ==========================  ========  ========  ========  ========  ========
    ours (JVM writer), warm/s   111,144   106,498   93,936    117,985   145,009
    ours p99 batch latency      284.2 ms  100.1 ms  105.9 ms  50.6 ms   102.9 ms
    ours vs the peer            45.0x     27.1x     26.5x     33.7x     39.2x
    Kafka's floor, warm/s       177,796   197,294   207,651   203,326   191,703
    ours' time / the floor's    1.60x     1.85x     2.21x     1.72x     1.32x
    every goal                  p99       p99       rate+p99  **met**   p99
    ==========================  ========  ========  ========  ========  ========

    Two ``--writers jvm --skip-peer`` runs before them: 90,831 / 110,185 envelopes/s vs the floor's 150,099 /
    149,349 (1.65x / 1.36x). So: 20x in every run, the rate in 4 of 5, p99 in 1 of 5 (over 100 ms by 0.1-6 ms
    in three), every goal in 1.

    What the floor shows: **Kafka's own Java producer, with nothing to build and no Spark, sends these messages
    at 150-208k/s here** (warm medians; its rounds 105-253k/s), its sending threads running 0.40-0.67 CPU-s per
    100k messages (4-7 us each: the record writing with its 12 headers, lz4) and its JIT 0.06-0.38 s per round.
    The issue's premise ("the broker on loopback takes far more than" 100k envelopes/s) does not hold for 1.8
    KiB messages with 12 headers on two shared cores: the goal is 48-67 % of what Kafka alone reaches. Ours'
    task threads ran 0.54-1.07 CPU-s per round (the same sending plus building the envelopes and Spark's scan of
    the cached rows) and its JIT threads 0.25-0.85 s, against the floor's 0.06-0.38.

    Where ours' JIT goes (``-XX:+LogCompilation``, rounds 4-8 of a jvm-only run whose rounds took 0.67-0.76 s):
    C2 compiled for 3.75 s during those 3.97 s -- Kafka's producer internals ~1.6 s (``RecordAccumulator.append``
    0.59, ``partitionReady`` 0.38, ``ProducerBatch.tryAppend`` 0.23 ..., recompiled after 9 ``unstable_if``
    deoptimizations: a branch first taken in a late round), Java serialization ~1.15 s
    (``ObjectInputStream.readSerialData`` 0.57, ``ObjectOutputStream.writeObject0`` 0.47: Spark's task binary,
    21 KB for this cached DataFrame, written once per job and read by each task), our partition loop 0.49 s
    (``Publisher.publish``, recompiled with Kafka's ``send()`` inlined). The ClosureCleaner's class-file parsing
    the last profile showed is gone (7ad99cd: ``SparkContext.runJob`` with a function class of our own instead of
    ``JavaRDD.mapPartitions().collect()``: a warm 200-row publish 116 / 118 ms -> 94 / 85 ms, alternating runs of
    ``--rows 200 --warmup 10 --rounds 30``; 100k rounds unchanged within the noise, three alternating pairs 90 /
    92 / 119k/s before vs 84 / 125 / 83k/s after).
    When the floor program still created each round's topic itself and sent at once, 2 of ~12 runs had one
    round stall until ``delivery.timeout.ms``: the broker refused the first batch of a partition it was still
    creating, accepted the partition's next batch as its first, then refused the retried first one as
    ``OutOfOrderSequenceException`` (idempotent producer, broker log) until it expired. The topics are now
    created and awaited beforehand, as ours' always were; the broker log shows no such error for ours' topics
    in any run. In a pipeline the same would spool those envelopes and fail the publish (nothing is lost).
    The same ``--writers jvm --skip-peer`` command later on a busier host (22:40): ours 78,770/s, the floor
    117,491/s (1.49x): the floor moves with the host as much as ours.
    p99 is not the fresh topic's first batches: a diagnostic run (23:17, the same protocol, each round's batch
    latencies split) had its measured rounds' p99 at 402 ms with them and 394 ms without the first batch of
    each partition; the slow batches were stalls of whole rounds (round 4: five batches at 423-478 ms).
    Tried again, no gain: the C2 thresholds x10 (three alternating pairs on a busy host: 93 / 86 / 87k/s default
    vs 79 / 87 / 94k/s).

Results (2026-12-06, evening: aea9b9d, the publisher unchanged since 94a0ce0, the same machine)
    The one command, three runs (18:19 right after ``scripts/stack.sh up``, 18:53, 19:05): warm median 93,383 /
    91,720 / **125,415** envelopes/s, 41.0x / 58.6x / **43.6x** the peer, p99 85.7 / 94.6 / **59.4** ms, cold 4.7
    / 4.1 / 2.9 s: the third met every goal, the first two missed the rate by 7-8 % (20x and p99 met). The
    canary read 0.18-0.26 s in all three, so it does not tell these apart; the per-round lines do: in the
    missed runs the task threads ran 0.77-0.99 s per round and waited 0.64-1.17 s for a CPU, the JIT threads
    0.46-0.76 s. Two more after a restart of the stack (80da606): 19:46, right after ``scripts/stack.sh up``:
    142,941/s, 68.4x, **p99 152.1 ms** (a fresh broker, the known weak spot); 19:47: **88,211/s**, 22.0x, p99
    86.0 ms, with the day's fastest canary (0.12-0.14 s), rounds of 0.95-1.40 s, the task threads running ~1.0 s
    and waiting 0.8-1.4 s per round and the JIT threads still at 0.5-0.8 s in round 8. So today: every goal met
    in 1 of 5 runs, the 20x goal in all, the rate in 2, p99 in 4.

Results (2026-12-06, fourth session: f7247a6, the same 2-core machine)
    Each round now also prints what the Spark JVM's threads did during it (``/proc/<pid>/task/*/schedstat``): the
    task threads' CPU seconds and their seconds *waiting, runnable, for a CPU*, and the JIT threads' CPU seconds;
    and the run prints a CPU canary (a fixed Python loop, median of 5) before and after ours.

    - The one command, three consecutive runs at 15:30: warm median 79,371 / 80,948 / 110,364 envelopes/s,
      80.3x / 21.3x / 29.2x the peer (the peer itself at 989 / 3,799 / 3,774 rows/s), p99 63.6 / 76.9 / 55.9 ms:
      **the rate missed in 2 of 3** (goal met in the third); cold 4.3 / 4.3 / 3.5 s. The first run of the day,
      right after ``scripts/stack.sh up``: 116,455/s, 34.5x, p99 103.6 ms (p99 missed). ``--writers jvm
      --skip-peer`` at 15:05: 139,269 and 143,772/s, p99 45-52 ms; 15:08-15:16: 95-124k/s; 15:25: 78-86k/s.
      The task threads' CPU per envelope moved with it (6.3-9.2 us at 15:16, 9.8-11.4 us at 15:25, same
      code): the host, not the code, sets the absolute rate; a 3M-iteration loop took 0.28 s at 15:17 and
      0.48-0.55 s at 15:26 (``/proc/stat`` shows no steal). The canary (0.155-0.208 s in the three runs above)
      samples seconds, not the whole run, so it only roughly follows the rate.
    - Where the machine goes (rounds 4-8 of one run, 5.5 s, both cores = 11 CPU-s): the task threads ran 4.1 s
      and **waited 4.2 s for a CPU**; the JIT threads ran **3.4 s**; the broker 1.3 s; the producers' I/O
      threads 0.7 s (and waited 1.9 s). Per round now: task threads 0.7-1.2 s run + as much waiting, JIT
      0.5-0.9 s. So a third of the machine compiles during the "warm" rounds. ``-XX:+LogCompilation``: C2's
      late work is code that becomes hot only after several publishes -- Spark's per-job machinery (the closure
      cleaner's ASM ``ClassReader.readCode`` 0.9 s, class-file lookups 0.6 s, Java deserialization of the tasks
      1.0 s), our partition loop (``Publisher.call`` 0.9 s), Kafka's sender (``RecordAccumulator.partitionReady``
      0.7 s); 31 s of C2 compile-thread time in a 42 s run. Even rounds 16-20 of ``--warmup 15`` still had
      0.2-1.4 s of JIT each (those rounds: 117-167k/s, median 148k).
    - JFR of the task threads (rounds 4-9): Kafka's producer 49 % of the samples, Spark (the cached columns,
      ``UnsafeRow``) 20 %, ours 20 % (``Envelopes`` 8, ``Bytes`` 6, ``Json`` 4), JDK 9 %. Within Kafka, the 12
      header names cost ~25 %: ``Utils.utf8`` (encoding each name per record) 12 %, ``Utils.utf8Length`` 11 %,
      plus their bytes' copy. The one thing of ours worth taking: a decimal column's text through
      ``BigDecimal.toPlainString`` and its ``StringBuilder`` (~5 %); fc494dd writes a decimal of precision <= 18
      from its unscaled long (parity test extended with ``DECIMAL(18,0)`` / ``DECIMAL(18,6)`` edge values).
    - p99: the slowest batches of a round are mostly the first of each partition (the producer fetching the
      metadata of the round's new topic), then stalls while the threads wait for a CPU.
    - Tried, no gain: ``-XX:TieredStopAtLevel=1`` on the Spark JVM (C1 only: the cold publish 2.1 s instead of
      3-3.7 s, but warm 57-96k/s, median 61k/s); ``-XX:+UseBiasedLocking`` (the producer's ``DataOutputStream``
      locks per write: 144-146k/s vs 139-144k/s for the default in alternating runs, the noise).
    - Not adopted, for the next session to weigh: the C2 thresholds x10 (``-XX:Tier4InvocationThreshold=50000
      -XX:Tier4MinInvocationThreshold=6000 -XX:Tier4CompileThreshold=150000 -XX:Tier4BackEdgeThreshold=400000``
      through ``spark.driver.extraJavaOptions``). The per-row code is hot enough to reach C2 anyway (the task
      threads' CPU per round unchanged, ~1.0 s), but Spark's lukewarm per-job code no longer does, so the JIT
      settles: its threads ran 0.05 s in round 8 (default: 0.55-0.85 s), round 8 took 0.79-0.81 s with the
      tasks waiting 0.33-0.36 s for a CPU (default 1.03-1.50 s, 0.80-1.25 s). Two alternating pairs on a busy
      host: medians 104,064 / 101,059 vs 88,335 / 96,974 envelopes/s; cold publishes alike (3.6-4.0 vs
      3.5-3.7 s). It is a JVM-wide setting of the embedded session: it would have to be measured on the loads
      (P2-P4) and the quality operator too before becoming a default, and it mostly helps repeated publishes in
      one JVM, which an Airflow task (one session, one publish) rarely makes.

    So on this machine the rate goal is met when the host is quiet and missed when it is busy (today: met in 1
    of the 3 consecutive full runs, and in the jvm-only runs of the quiet hour); the 20x goal in every run. The
    remaining costs are Kafka's per-header work, Spark's cached scan and the JIT on two shared cores.

Results (2026-12-06, third session: 987d577, the same machine, which ran ~15-25 % slower than in the runs below)
    Each round now also prints the JIT compilation and GC seconds the Spark JVM spent during that publish
    (``CompilationMXBean`` / ``GarbageCollectorMXBean`` through py4j). They show why "warm" is hard to reach on 2
    cores: the JIT (one C1 and one C2 thread here) spends 5-6.6 s in the cold publish and still 0.5-2.2 s in
    *every* later one, up to round 13, while the round itself takes 0.6-1.3 s (``-XX:+LogCompilation``: big C2
    compilations of Kafka's ``RecordAccumulator`` / ``Sender`` / ``NetworkClient``, Java serialization's
    ``ObjectInputStream`` for Spark's tasks, and our publisher loop, each 0.3-1.2 s, after a few rounds of
    profiling; deoptimizations are rare after round 6).

    - Right after a broker restart, ``--warmup 8`` (13 publishes per writer): rounds 9-13 at 77-117k
      envelopes/s, median 87,031/s, p99 106.3 ms, 34.3x: **goal NOT met** (the Python writer 50k/s). With
      ``--warmup 3 --rounds 10`` on a just-started stack: median 104,790/s, p99 91.8 ms (rounds 4-7 at 75-90k/s).
    - On a broker up for 10-40 minutes, ``--writers jvm --warmup 3 --rounds 6``, eight runs: medians 91-110k
      envelopes/s, p99 50-104 ms.
    - The one command (defaults) on a broker up for an hour, nothing else running: 1.090 s = 91,725
      envelopes/s, p99 79.5 ms, 27.5x the peer (3,335 rows/s): **rate missed**; the Python writer 52k/s (59-80k/s
      in the runs below, so the machine ran slower today, not the code).
    - Tried, no effect beyond the noise: the Java producer's ``buffer.memory`` 4 / 8 MiB instead of 32 MiB
      (bounding what waits in the producer: 94-95k/s vs 93-99k/s alternating, p99 59-104 vs 58-73 ms); all rounds
      of a writer to one topic (as a pipeline's publishes go to its one DLQ topic) instead of a fresh topic per
      round (91/104k/s vs 95/110k/s alternating).
    - JFR of the task threads (6 s in rounds 5-7): Kafka's ``send()`` 60 % of the samples, building 28 %, Spark's
      cached scan 11 %. Within ``send()`` the biggest single item is ``Utils.utf8Length`` of the 12 header
      names: ``DefaultRecord`` computes it three times per header (the size estimate, ``hasRoomFor``, the write)
      and encodes the name once more; a warm microbenchmark of exactly that costs 0.6-0.8 us per message
      (~12-15 % of a task thread's ~5 us per envelope). kafka-clients 4.1.1 has the same code; the header
      names are the DLQ's contract with its consumers, so this stays.

    So on this machine the P7 goal is met on a settled system (the runs below) and missed in about half the
    runs right after the broker and the Spark JVM start: both cores are shared by the two task threads, the
    broker and both JVMs' JIT compilers, and ~100k envelopes/s is where they saturate.

Results (2026-12-06, later: d697b37, this 2-core machine, nothing else running; ``--rows 100000``, defaults)
    Three consecutive runs of the one command (each starting after the previous one ended):

    ====================  ============  ============  ============
    ..                    run 1         run 2         run 3
    ====================  ============  ============  ============
    JVM writer, warm      0.934 s       0.686 s       0.732 s
    = envelopes/s         107,044       145,732       136,526
    p99 / max batch       47.5 / 56 ms  44.9 / 62     49.6 / 56
    JVM writer, cold      3.824 s       2.574 s       2.958 s
    Python writer, warm   1.682 s       1.371 s       1.246 s
    peer (extrapolated)   33.7 s        22.4 s        35.8 s
    ours vs peer          36.0x         32.7x         48.9x
    goal                  met           met           met
    ====================  ============  ============  ============

    The final code (de18db3: the JVM writer also renders a failed-rules column; none in this benchmark), the
    same command: the broker up for minutes, two runs: 0.678 / 0.849 s = 147,423 / 117,750 envelopes/s, 35.8x /
    31.1x, p99 43.5 / 62.8 ms (met); right after ``scripts/stack.sh up`` started the broker: 0.933 s = 107,164/s,
    43.9x, **p99 122.2 ms (not met)**; the Python writer's p99 in that run was 111 ms and the peer its slowest
    (2,441/s). A freshly started broker is the weak spot: with the broker restarted, ``--writers jvm
    --warmup 3 --rounds 8`` gave rounds 4-7 at 92-117k/s with p99 85-180 ms and rounds 8-11 at 138-162k/s with
    p99 43-83 ms (the broker's JVM and ours settle over ~7 publishes of 100k); a broker up for a while gives the
    latter from round 4 on. Of 3 full runs right after a broker (re)start, 1 met every goal (166k/s, p99 55 ms)
    and 2 missed p99: 122 ms, and 109 ms with 300k envelopes produced by librdkafka to a scratch topic first (a
    broker warm-up; not kept: it did not help).

    What changed since the runs below: (1) the benchmark deleted each round's topic right after the round; the
    broker then closed (flushed) and renamed that topic's logs while the next round was measured. Five runs of
    the same code with that protocol: 107-133k envelopes/s, p99 43-169 ms (one run over 100 ms, as in run C
    below). The topics are now deleted after the last round, and each run starts with ``os.sync()`` and a wait
    for idle CPUs (the previous run's broker writes are otherwise written back by the kernel during this run;
    the output prints what it waited). (2) The driver hands the JVM publisher its plan as one JSON document and
    reads the statuses back as one JSON array: ~190 py4j round trips became 2; a 100-row publish, warm, went
    from 53-70 ms to 40-65 ms (the rest is the Spark job: 2 tasks, their serialization, scheduling).

    Where the CPU goes now (per warm 100k-envelope round, /proc of the Spark JVM's threads, one run of 11
    rounds): the 2 task threads 0.45-0.57 CPU-s (~5 us per envelope), the C2 JIT compiler 0.16-0.45 CPU-s
    (0.95 in the cold round), the broker 0.10-0.17, the producers' I/O thread 0.06-0.09, GC 0.01-0.14: both
    cores busy (idle 0.01-0.11 s per round). ``-XX:+LogCompilation``: C2 spends 2.1 / 1.0 / 0.8 / 0.8 / 1.0 /
    0.5 / 0.7 / 0.9 / 0.4 / 0.4 / 0.3 s in rounds 1-11 -- ``Envelopes.build`` alone 1.4 s in the cold round,
    Kafka's ``RecordAccumulator.append`` recompiled after uncommon traps (``MemoryRecordsBuilder.isFull``, a
    branch a batch rarely takes) 0.1-0.4 s each time, the publisher's loop (OSR) 0.6 s once; so the measured
    rounds 4-8 still pay the JIT, and a longer session settles at 150-200k envelopes/s (rounds 8-12 of an
    experiment publishing the same DataFrame: 0.46-0.6 s). JFR samples of the task threads: building the
    messages ~22 % (JSON escaping, SHA-256 of the id, digits), Kafka's record writing ~45 % (``DefaultRecord``:
    each byte of a varint through a synchronized ``DataOutputStream`` into the lz4 stream, and the UTF-8
    length of the 12 header names computed for the size estimate and again for the record), Spark's cached
    column scan ~20 %. Producer settings swept (``batch.size`` 256 KiB, ``linger.ms`` 5 / 20): within the
    noise (120-156k/s for the same setting in two runs).

Results (2026-12-06, c5e92d1, this 2-core machine, nothing else running; ``--rows 100000``, defaults)
    The code of c5e92d1, the broker up for 7 minutes or more, three consecutive runs:

    ====================  ============  ============  ============
    ..                    run A         run B         run C
    ====================  ============  ============  ============
    JVM writer, warm      0.817 s       0.747 s       0.931 s
    = envelopes/s         122,354       133,855       107,421
    p99 / max batch       77.2 / 90 ms  74.3 / 104    108.9 / 144
    JVM writer, cold      2.705 s       2.141 s       3.524 s
    Python writer, warm   1.450 s       1.939 s       1.986 s
    peer (extrapolated)   25.9 s        28.8 s        27.6 s
    ours vs peer          31.7x         38.6x         29.7x
    goal                  met           met           p99 missed
    ====================  ============  ============  ============

    The run before them, the broker just restarted: 1.263 s (79,159/s), p99 299 ms, 34.8x. Two runs of the code
    before c5e92d1 (f81993f; same publisher but the producers neither swept nor kept after a failed partition):

    ====================  ============  ============
    ..                    run 1         run 2
    ====================  ============  ============
    JVM writer, warm      1.051 s       1.067 s
    = envelopes/s         95,121        93,758
    measured rounds (s)   1.051 1.064   1.097 1.238
                          0.818 1.073   0.935 1.041
                          0.887         1.067
    p99 / max batch       64.5 / 81 ms  79.6 / 112 ms
    JVM writer, cold      2.976 s       4.130 s
    Python writer, warm   1.874 s       1.771 s
    Python writer, cold   5.588 s       6.059 s
    peer (extrapolated)   30.1 s        35.1 s
    ours vs peer          28.6x         32.9x
    ====================  ============  ============

    The Python writer and the peer moved by as much as ours between these runs (Python 38-69k/s): the machine,
    not the code, makes most of the spread. With that protocol: 20x always met; 100k envelopes/s and p99 < 100 ms
    met in 2 of the 3 runs on a warm broker, not in the runs before.

    Where the CPU goes (warm, per
    100k envelopes, from /proc of the Spark JVM's threads, an 8-round experiment): the two task threads 0.75-0.85
    CPU-s (~8 us per message, ~45 % building it, ~55 % in Kafka's ``send()``: header sizing and encoding, the lz4
    stream), C2 still compiling 0.4-0.6 s per publish (Spark's per-job code and the hot paths), GC 0.05-0.2 s, the
    broker 0.2-0.3 s: the two cores are saturated (idle 0.01-0.07 s of the ~2 core-seconds), so more partitions do
    not help here. A cold publish pays the JIT (C2 ~2 CPU-s) and the producers' start (0.15-0.2 s).

    What moved it (warm, 2 partitions; the experiments published the same 100k rows several times in one session):
    the Python workers' path through Spark 49-56k/s -> the JVM writer with the Java producer's default batches
    (16 KiB) and our ``linger.ms=2`` 45-54k/s -> 1 MiB batches and ``linger.ms=10`` 71-88k/s in rounds 3-4, 92-108k/s
    in rounds 4-8 -> no copy per string value, the error class looked up by its UTF-8 bytes, headers as an array
    104-129k/s in rounds 4-8 -> one producer per executor thread kept between publishes (a warm publish of 2,000
    rows: 0.23 -> 0.18 s, medians of 5). The benchmark's protocol (3 warm-up rounds, median of the next 5) gave
    94-95k/s before c5e92d1 and 107-134k/s after it (a warm broker; see above for how much the machine varies). Compression ``none``, ``snappy``, ``zstd``: no better than lz4 (``none``: the broker's CPU triples;
    ``zstd``: 46-49k/s). One producer shared by the two task threads: no better (74-108k/s), the Java producer
    appends and compresses under a lock per topic partition. Not tried: fewer headers per message (a contract
    change for the DLQ's consumers).

    The earlier protocol (until 2026-12-06, and the issue's figures): the partition publisher's function run on
    Arrow batches of one partition in this process, without Spark; the history below used it.

Reading the numbers
    The broker is on 127.0.0.1, so the peer's per-record round trip is ~0.7-1.5 ms here: the most
    favourable case for it (over a real network with replicated ``acks=all`` it is several times slower;
    ours barely changes). Ours is CPU-bound in Python; the output shows how much of it is building the
    messages alone.

Results of the earlier protocol (2026-12-02, this 2-core machine shared with another engineer's PostgreSQL benchmark: load 2-3.5;
a 3M-iteration Python loop took 0.69-0.73 s; the old version of this benchmark gave ours 11.0 s where
issue #15 had 2.33 s, so the machine ran ~4.7x slower than when the issue's figures were taken)
    Before (``main`` at 68b0253; its benchmark timed ``DeadLetterHook.publish`` of prepared envelopes,
    **building them not timed**): ours 11.006 s (9,086/s), p99 682 ms, peer 170.6 s, 15.5x. The same code
    under this benchmark (the real path, building timed): ours **24.134 s (4,144 envelopes/s)**, peer
    85.3 s, 3.5x; no batch latencies (one batch confirmed at a time, nothing in flight while building).

    Where the time went (cProfile, old path, 20,000 rows, 12.5 s): ``build_envelope`` 7.1 s -- the
    record converted twice by ``to_jsonable`` (3.4 s: in ``build_envelope`` and again for the id), the
    id's stdlib canonical JSON + SHA-256 (``__post_init__`` 2.9 s), ``dataclasses.replace`` for the error
    class 1.5 s (a second 20-field frozen init); ``to_pylist`` ~1 s (a tz-aware timestamp costs 11.6 us:
    1.2 s per 100k rows); ``to_json`` 1.0 s, ``produce`` 0.5 s, ``kafka_headers`` 0.4 s; then waiting for
    each batch's acks with nothing else to do. Building was ~90% of the 24 s.

    After (``KafkaMessageBuilder``, :mod:`airflow_etl_provider.executor.arrow_envelopes`: column-wise,
    byte-identical messages; up to 4 batches in flight; the producer created before the first batch is
    built), ``--rows 100000``, three runs:

    ====  ========  ============  =========  =======  ======  ==========
    run   ours (s)  envelopes/s   p99 (ms)   peer(s)  ratio   speed-up
    ====  ========  ============  =========  =======  ======  ==========
    1     2.872     34,816        41.6       87.4     0.0328  30.4x
    2     4.141     24,150        101.9      69.4     0.0597  16.8x
    3     2.654     37,686        52.6       67.7     0.0392  25.5x
    ====  ========  ============  =========  =======  ======  ==========

    Median: ours 2.872 s (34,816 envelopes/s, 8.4x the old real path), p99 52.6 ms, 25.5x the peer.
    Three more runs of the same code 25 minutes later, load 3.5-3.8: ours 4.505 / 5.354 / 3.594 s (median
    4.505 s, 22,196 envelopes/s), p99 92.4 / 155.0 (the first batch, the producer's start) / 68.9 ms, peer
    142.1 / 103.1 / 102.7 s, 31.5x / 19.2x / 28.6x (median 28.6x).
    Goal: 20x met (2 runs of 3), p99 < 100 ms met (2 of 3; run 2 was descheduled by the neighbour's
    load), **100,000 envelopes/s not met** on this machine: building the messages alone takes 1.2-1.4 s
    per 100k rows (12-14 us/row) and ``produce()`` of a message with its 12 headers 10-20 us here
    (without headers ~7 us), so the producer calls alone exceed 1 s per 100k.

    Where the time goes now (cProfile, 30,000 rows): ``produce`` 28% (0.59 of 2.1 s), building 38%
    (of which the per-row value template, header lists and id hashing ~11%, the records' ``to_pylist``,
    one ``orjson.dumps`` and its split ~13%, Arrow kernels ~5%), ``poll`` + delivery callbacks 14%, the
    rest imports and waiting.

    2026-12-06, a faster machine (same 2 cores, the broker freshly started, nothing else running), two runs of
    ``--rows 100000``: ours 2.635 / 2.406 s (37,950 / 41,566 envelopes/s), building alone 6.4-9.2 us/row, p99
    batch latency 741.7 ms (the broker's first minute) / 115.0 ms; the peer 1,195 / 2,993 rows/s (its
    loopback round trip halved between the runs), so 31.7x / 13.9x. Still short of 100,000 envelopes/s and
    of p99 < 100 ms in one Python process: ``produce()`` with the 12 headers and the building cost ~20 us a
    row together. What would reach it: more partitions publishing in parallel (the real path runs one
    publisher per Spark partition; this benchmark times one), or fewer headers per message (a contract
    change for the DLQ's consumers). Not done.

    Tried and not kept: ``Producer.produce_batch`` (confluent-kafka 2.16 takes no headers); building a
    whole 10,000-row Arrow batch at once (amortises Arrow's per-call cost, but the ~0.2 s pause serves no
    delivery reports: every tenth batch showed 180-250 ms, p99 failed; now 1,000-row chunks, with the
    reports served before each); Arrow ``strftime`` and the timestamp-to-string cast for ISO timestamps
    (~3 us/value; now integer parts, a table of two-digit strings and one format per distinct day,
    ~1.5 us/value); one ``orjson.dumps`` per value (4-8 us per call here vs 0.3 us per item in one call
    on a list: now one call per column/batch, cut at the separators and checked by counting them); a
    C-level delivery callback (``dict.__setitem__``) instead of the counting Python callback: no
    difference measurable in the noise. Not tried: fewer headers (the format is a contract).

How to run (the local stack must be up: ``make services-up``)::

    set -a; . .local/airflow.env; set +a
    .venv/bin/python benchmarks/bench_dlq_kafka.py [--rows 100000] [--peer-rows 10000]

Investigation knobs: ``--batch-size N`` (``publish_dataframe``'s ``batch_size``) and ``--producer-setting
linger.ms=5`` (repeatable; passed through the dead-letter config to ``KafkaSink``, overriding its
defaults); ``--skip-peer`` for quick sweeps of our side only (then no ``bench`` line is printed). To measure
another version of the package, put its source first: ``PYTHONPATH=/path/to/old .venv/bin/python ...``.

The last line is ``bench dlq_kafka_vs_sync_send: ours=<s> peer=<s> ratio=<ours/peer>`` for ``--rows`` rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from _common import (
    CANARY_LOOPS,
    cpu_canary,
    delete_topics,
    kafka_bootstrap,
    peak_rss_mb,
    percentile,
    result_line,
    settle,
    topic_message_count,
)

from airflow_etl_provider.hooks.dead_letter import DEFAULT_BATCH_SIZE

BENCH_ID = "dlq_kafka_vs_sync_send"
#: for information, no goal: ours against Kafka's own producer sending the same messages already built
FLOOR_BENCH_ID = "dlq_kafka_vs_kafka_floor"
PARTITIONS = 3
GOAL_SPEEDUP = 20.0
GOAL_P99_S = 0.100
GOAL_RATE = 100_000  # envelopes/s

# ------------------------------------------------------------------------------------------ failed rows
ROW_BATCH = 10_000  # rows per Arrow record batch: Spark's spark.sql.execution.arrow.maxRecordsPerBatch
ERROR_CLASS = "psycopg.errors.NotNullViolation"
STAGE, SOURCE, TARGET, KEYS = "load", "s3://raw/orders/2025-06-01/", "etl.orders", ("order_id",)


def make_run_context() -> Any:
    """The task that publishes: one scheduled try of the daily orders load."""
    from airflow_etl_provider.core.envelope import RunContext

    return RunContext(
        dag_id="orders_daily_load",
        task_id="load_orders",
        run_id="scheduled__2025-06-01T02:00:00+00:00",
        try_number=1,
        pipeline_id="orders_daily",
    )


def build_rejected_rows(rows: int) -> Any:
    """``rows`` failed-order rows as the load hands them to the DLQ (``publish_dataframe``): the original
    columns plus ``_etl_error`` (PostgreSQL's not-null message) and ``_etl_error_class``, as Arrow record
    batches of :data:`ROW_BATCH` rows (what ``mapInArrow`` gives a partition). Deterministic content."""
    import pyarrow as pa

    from airflow_etl_provider.executor.dead_letter import ERROR_CLASS_COLUMN, ERROR_COLUMN

    rng = random.Random(42)
    base = datetime(2025, 6, 1, 1, 0, tzinfo=UTC)
    statuses = ("pending", "paid", "shipped", "cancelled")
    countries = ("DE", "FR", "NL", "US", "GB", "ES", "IT", "PL")
    currencies = ("EUR", "EUR", "EUR", "USD", "GBP")
    records: list[dict[str, Any]] = []
    for i in range(rows):
        record: dict[str, Any] = {
            "order_id": 10_000_000 + i,
            "customer_id": None if i % 3 == 0 else f"C{rng.randrange(10**8):08d}",
            "email": f"customer.{rng.randrange(10**6)}@example.com",
            "amount": Decimal(rng.randrange(100, 500_000)) / 100,
            "currency": rng.choice(currencies),
            "status": rng.choice(statuses),
            "created_at": base + timedelta(seconds=rng.randrange(86_400), microseconds=rng.randrange(2) * 250_000),
            "country": rng.choice(countries),
            "sku": f"SKU-{rng.randrange(10**5):05d}-{rng.choice('ABCDEFG')}",
            "quantity": rng.randrange(1, 20),
        }
        failing = ", ".join("null" if v is None else str(v) for v in record.values())
        record[ERROR_COLUMN] = ('null value in column "customer_id" of relation "orders" violates not-null '
                                f"constraint\nDETAIL:  Failing row contains ({failing}).")
        record[ERROR_CLASS_COLUMN] = ERROR_CLASS
        records.append(record)
    schema = pa.schema([
        ("order_id", pa.int64()), ("customer_id", pa.string()), ("email", pa.string()),
        ("amount", pa.decimal128(10, 2)), ("currency", pa.string()), ("status", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")), ("country", pa.string()), ("sku", pa.string()),
        ("quantity", pa.int32()), (ERROR_COLUMN, pa.string()), (ERROR_CLASS_COLUMN, pa.string()),
    ])
    return pa.Table.from_pylist(records, schema=schema).to_batches(max_chunksize=ROW_BATCH)


def envelope_of(row: dict[str, Any], now: datetime) -> Any:
    """One row's envelope the row-by-row way (what ``partition_publisher`` did before the column-wise path,
    and what the seed design does): ``build_envelope``, then the error class of the row."""
    import dataclasses

    from airflow_etl_provider.core.envelope import build_envelope
    from airflow_etl_provider.executor.dead_letter import (
        ERROR_CLASS_COLUMN,
        ERROR_COLUMN,
        FAILED_RULES_COLUMN,
    )

    error = row.pop(ERROR_COLUMN, None) or "rejected"
    error_class = row.pop(ERROR_CLASS_COLUMN, None)
    rules = row.pop(FAILED_RULES_COLUMN, None) or ()
    env = build_envelope(row, error, stage=STAGE, pipeline_id="orders_daily", run_context=make_run_context(),
                         failed_rules=list(rules), key_columns=KEYS, source=SOURCE, target=TARGET, now=now)
    return dataclasses.replace(env, error_class=error_class) if error_class else env


# ------------------------------------------------------------------------------------------ kafka admin
def _admin_config(bootstrap: str) -> dict[str, Any]:
    # log_level 4: no "Purging unserved events from background queue" info line when the client goes
    return {"bootstrap.servers": bootstrap, "log_level": 4}


def create_topics(bootstrap: str, topics: Sequence[str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_admin_config(bootstrap))
    for future in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30  # wait until every partition has a leader in the metadata
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=10).topics
        if all(t in meta and len(meta[t].partitions) == PARTITIONS
               and all(p.leader >= 0 for p in meta[t].partitions.values()) for t in topics):
            return
        time.sleep(0.2)
    raise RuntimeError(f"topics {list(topics)} not ready within 30 s")


# ------------------------------------------------------------------------------------------ ours
def jvm_times(spark: Any) -> tuple[float, float]:
    """Seconds the Spark driver JVM (where ``local[*]``'s tasks run) has spent so far compiling (all JIT
    threads, ``CompilationMXBean``) and in GC (all collectors), read through py4j."""
    management = spark.sparkContext._jvm.java.lang.management.ManagementFactory
    gc_ms = sum(bean.getCollectionTime() for bean in management.getGarbageCollectorMXBeans())
    return management.getCompilationMXBean().getTotalCompilationTime() / 1000, gc_ms / 1000


def thread_times(pid: int) -> dict[tuple[str, str], tuple[float, float]]:
    """The task and JIT threads of process ``pid`` (Linux ``/proc/<pid>/task/<tid>/schedstat``), keyed by (tid,
    ``tasks`` or ``jit``): the seconds each has run on a CPU and the seconds it has waited, runnable, for one."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                name = fh.read()
            group = "tasks" if name.startswith("Executor task") else "jit" if "CompilerThre" in name else None
            if group is None:
                continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                ran_ns, waited_ns = (int(v) for v in fh.read().split()[:2])
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[(tid, group)] = (ran_ns / 1e9, waited_ns / 1e9)
    return out


def cpu_share(before: dict[tuple[str, str], tuple[float, float]],
              after: dict[tuple[str, str], tuple[float, float]]) -> str:
    """What the Spark JVM's threads did between two :func:`thread_times`: the task threads' CPU seconds and their
    seconds waiting for a CPU, the JIT threads' CPU seconds."""
    ran = {"tasks": 0.0, "jit": 0.0}
    waited = 0.0
    for key, (r, w) in after.items():
        r0, w0 = before.get(key, (0.0, 0.0))
        ran[key[1]] += r - r0
        if key[1] == "tasks":
            waited += w - w0
    return (f"task threads ran {ran['tasks']:.2f} s, waited {waited:.2f} s for a CPU; "
            f"JIT threads ran {ran['jit']:.2f} s")


def run_ours(args: argparse.Namespace, batches: list[Any], bootstrap: str, run: str,
             producer_settings: dict[str, Any]) -> dict[str, list[tuple[float, list[float], str]]]:
    """Publish the rows with ``DeadLetterHook.publish_dataframe`` from a cached DataFrame of ``--partitions``
    partitions in an embedded ``local[*]`` session built by ``SparkSessionHook`` (as the operators build theirs),
    ``--rounds`` times per writer, each round to a fresh topic. Returns, per writer, (seconds, batch latencies,
    topic) per round; the topics of the last round of each writer are kept for verification (the caller deletes
    them), the others deleted."""
    import pyarrow as pa

    from airflow_etl_provider.hooks import dead_letter as dl
    from airflow_etl_provider.hooks.spark import SparkSessionHook

    rounds: dict[str, list[tuple[float, list[float], str]]] = {}
    done: list[str] = []  # the topics of all rounds but the last of each writer
    with SparkSessionHook().session() as spark:
        jvm_pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
        t0 = time.perf_counter()
        df = spark.createDataFrame(pa.Table.from_batches(batches)).repartition(args.partitions).cache()
        assert df.count() == args.rows
        print(f"  Spark {spark.version}, master {spark.sparkContext.master}; {args.rows:,} rows cached in "
              f"{args.partitions} partitions ({time.perf_counter() - t0:.1f} s, not timed)")
        for writer in args.writers:
            rounds[writer] = []
            total = args.warmup + args.rounds
            for k in range(total):
                topic = f"bench-dlq-ours-{run}-{writer}-{k}"
                create_topics(bootstrap, [topic])
                spool_dir = tempfile.mkdtemp(prefix="bench-dlq-spool-")
                hook = dl.DeadLetterHook(
                    {"type": "kafka", "topic": topic, "writer": writer,
                     "config": {"bootstrap.servers": bootstrap, **producer_settings}},
                    pipeline_id="orders_daily", run_context=make_run_context(), spool_dir=spool_dir)
                jit_before = jvm_times(spark)
                threads_before = thread_times(jvm_pid)
                start = time.perf_counter()
                try:
                    result = hook.publish_dataframe(df, stage=STAGE, key_columns=list(KEYS), source=SOURCE,
                                                    target=TARGET, batch_size=args.batch_size)
                except Exception as err:
                    print(f"FAIL: ours ({writer}): publish_dataframe raised {type(err).__name__}: {err}")
                    sys.exit(1)
                seconds = time.perf_counter() - start
                jit_s, gc_s = (after - before for after, before in zip(jvm_times(spark), jit_before, strict=True))
                share = cpu_share(threads_before, thread_times(jvm_pid))
                if result.delivered != args.rows or result.spooled:
                    print(f"FAIL: ours ({writer}): delivered={result.delivered} spooled={result.spooled} of "
                          f"{args.rows} (spool: {result.spool_paths}, errors: {result.errors[:3]})")
                    sys.exit(1)
                shutil.rmtree(spool_dir, ignore_errors=True)
                rounds[writer].append((seconds, list(result.batch_latencies_s), topic))
                what = "cold  " if k == 0 else "warmup" if k < args.warmup else "      "
                print(f"  {writer:6s} round {k + 1:2d} {what}: {seconds:6.3f} s = "
                      f"{args.rows / seconds:9,.0f} envelopes/s, batch p99 {_ms(percentile(result.batch_latencies_s, 99))}; Spark JVM: "
                      f"JIT {jit_s:.2f} s, GC {gc_s:.2f} s; {share}")
                if k < total - 1:
                    done.append(topic)
        df.unpersist()
    if not args.keep_topics:  # not between rounds: the broker's closing of a deleted topic's logs (a flush of
        delete_topics(bootstrap, done)  # its ~25 MB) would run during the next measured publish
    return rounds


# ------------------------------------------------------------------------------------------ verification
def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _norm_headers(headers: Any) -> list[tuple[str, bytes | None]]:
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    return [(k, _as_bytes(v)) for k, v in items]


def verify_ours(batches: list[Any], bootstrap: str, topic: str, sample_size: int = 2000) -> list[str]:
    """Read ``topic`` back with an independent consumer; return the problems found (empty = correct).

    Every row's key must be there exactly once; for ``sample_size`` random rows, the value and the headers
    must be byte for byte what the row-by-row envelope path gives (``build_envelope``, then ``to_json``,
    ``kafka_key``, ``kafka_headers``), with the envelopes' timestamp read from the topic."""
    from confluent_kafka import Consumer

    from airflow_etl_provider.core.envelope import kafka_headers, kafka_key

    problems: list[str] = []
    rows = [row for batch in batches for row in batch.to_pylist()]
    expected_keys = [str(row["order_id"]).encode() for row in rows]
    if len(set(expected_keys)) != len(rows):
        problems.append(f"the keys are not unique: {len(set(expected_keys))} keys for {len(rows)} rows")
    in_topic = topic_message_count(bootstrap, topic)
    if in_topic != len(rows):
        problems.append(f"topic holds {in_topic} messages (watermarks), expected {len(rows)}")

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-verify-{uuid.uuid4().hex[:10]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen: dict[bytes | None, Any] = {}
    duplicates = received = 0
    deadline = time.monotonic() + 120
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=10_000, timeout=1.0)
            if not msgs:
                if received >= max(in_topic, len(rows)) or time.monotonic() - idle_since > 15:
                    break
                continue
            idle_since = time.monotonic()
            for msg in msgs:
                if msg.error():
                    problems.append(f"consumer error: {msg.error()}")
                    continue
                received += 1
                key = msg.key()
                if key in seen:
                    duplicates += 1
                seen[key] = (msg.value(), msg.headers())
    finally:
        consumer.close()

    if received != len(rows):
        problems.append(f"consumed {received} messages, expected {len(rows)}")
    if duplicates:
        problems.append(f"{duplicates} duplicate keys consumed")
    missing = [k for k in expected_keys if k not in seen]
    if missing:
        problems.append(f"{len(missing)} envelopes missing from the topic (e.g. key {missing[0]!r})")
    unexpected = set(seen) - set(expected_keys)
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys in the topic (e.g. {sorted(unexpected)[0]!r})")
    if problems or not rows:
        return problems

    rng = random.Random(7)
    for i in rng.sample(range(len(rows)), min(sample_size, len(rows))):
        value, headers = seen[expected_keys[i]]
        # the publish's `now` (the Python writer's partitions take their own), to the millisecond
        now = datetime.fromisoformat(json.loads(value)["timestamp"].replace("Z", "+00:00"))
        env = envelope_of(dict(rows[i]), now)
        if kafka_key(env) != expected_keys[i]:
            problems.append(f"row {i}: the envelope's key {kafka_key(env)!r} is not {expected_keys[i]!r}")
            break
        if value != env.to_json().encode():
            problems.append(f"value of key {expected_keys[i]!r} differs from the envelope's to_json(): "
                            f"{value[:200]!r} != {env.to_json()[:200]!r}")
            break
        if _norm_headers(headers) != _norm_headers(kafka_headers(env)):
            problems.append(f"headers of key {expected_keys[i]!r} differ: {headers!r} != {kafka_headers(env)!r}")
            break
    return problems


# ------------------------------------------------------------------------------------------ Kafka's floor
FLOOR_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kafka_floor", "KafkaFloor.java")
#: the jars kafka-clients needs for the settings ours uses (compression codecs, logging API), from pyspark's jars
FLOOR_JARS = ("lz4-java-", "snappy-java-", "zstd-jni-", "slf4j-api-")


def floor_command() -> list[str]:
    """``java -cp <kafka-clients + codecs> KafkaFloor.java``: the same kafka-clients jar as the Spark session's
    (``SparkSessionHook``'s ``spark.jars``), its codecs from pyspark's own jars."""
    import glob

    import pyspark

    from airflow_etl_provider.hooks.spark import SparkSessionHook

    jars = SparkSessionHook().resolve_conf().get("spark.jars", "").split(",")
    clients = [j for j in jars if os.path.basename(j).startswith("kafka-clients-")]
    spark_jars = os.path.join(os.path.dirname(pyspark.__file__), "jars")
    codecs = [found for prefix in FLOOR_JARS for found in sorted(glob.glob(os.path.join(spark_jars, prefix + "*.jar")))]
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if len(clients) != 1 or len(codecs) != len(FLOOR_JARS) or not java:
        print(f"FAIL: Kafka's floor: need java and one kafka-clients jar on spark.jars plus {FLOOR_JARS} in "
              f"{spark_jars}; found java={java}, kafka-clients={clients}, codecs={codecs} (make setup fetches them)")
        sys.exit(1)
    return [java, "-Xmx1g", "-cp", os.pathsep.join(clients + codecs), FLOOR_SOURCE]


def run_floor(args: argparse.Namespace, bootstrap: str, source_topic: str, prefix: str,
              producer_settings: dict[str, Any]) -> list[float]:
    """Kafka's own floor: the Java producer sending the messages of ``source_topic`` (ours' last round, read
    into memory first, not timed) with the Java settings our JVM writer uses, from ``--partitions`` threads,
    ``--warmup`` + ``--rounds`` times, each to a fresh topic ``<prefix>-<k>`` (created here first, every
    partition led, as ours' are); returns every round's seconds."""
    from airflow_etl_provider.executor.sinks import KafkaSink
    from airflow_etl_provider.hooks.dead_letter_jvm import sink_java_config

    config = sink_java_config(KafkaSink(topic=source_topic,
                                        producer_config={"bootstrap.servers": bootstrap, **producer_settings}))
    if isinstance(config, str):
        print(f"FAIL: Kafka's floor: no Java producer settings: {config}")
        sys.exit(1)
    create_topics(bootstrap, [f"{prefix}-{k}" for k in range(args.warmup + args.rounds)])
    with tempfile.NamedTemporaryFile("w", suffix=".properties", delete=False) as props:
        props.writelines(f"{key}={value}\n" for key, value in sorted(config.items()))
    try:
        done = subprocess.run(
            [*floor_command(), props.name, source_topic, prefix, str(args.partitions), str(args.warmup),
             str(args.rounds)],
            capture_output=True, text=True, timeout=900, check=False)
    finally:
        os.unlink(props.name)
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith("round ")]
    if done.returncode != 0 or len(lines) != args.warmup + args.rounds:
        print(f"FAIL: Kafka's floor exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        sys.exit(1)
    print(f"  settings: {', '.join(f'{k}={v}' for k, v in sorted(config.items()) if k != 'bootstrap.servers')}")
    seconds = []
    for k, (_, _, took, *cpu) in enumerate(lines):
        seconds.append(float(took))
        ran = dict(item.split("=") for item in cpu)
        what = "cold  " if k == 0 else "warmup" if k < args.warmup else "      "
        print(f"  floor  round {k + 1:2d} {what}: {float(took):6.3f} s = {args.rows / float(took):9,.0f} messages/s; "
              f"sending threads ran {ran.get('send', '?')} s, producers' I/O threads {ran.get('io', '?')} s, "
              f"JIT threads {ran.get('jit', '?')} s")
    return seconds


# ------------------------------------------------------------------------------------------ peer
def run_peer(batches: Sequence[Any], rows: int, bootstrap: str, topic: str) -> tuple[float, list[float]]:
    """The first ``rows`` rows, each built into its envelope (timed, as on our side) and sent with one
    synchronous send-and-wait; return (total seconds, per-record latencies)."""
    from confluent_kafka import Producer

    from airflow_etl_provider.core.envelope import kafka_headers, kafka_key

    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    latencies: list[float] = []
    start = time.perf_counter()
    now = datetime.now(UTC)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    sent = 0
    for batch in batches:
        for row in batch.slice(0, rows - sent).to_pylist():
            t0 = time.perf_counter()
            env = envelope_of(row, now)
            producer.produce(topic, key=kafka_key(env), value=env.to_json().encode(),
                             headers=kafka_headers(env), on_delivery=on_delivery)
            remaining = producer.flush(30)
            latencies.append(time.perf_counter() - t0)
            if remaining or failures:
                print(f"FAIL: peer: delivery failed ({remaining} unconfirmed, errors: {failures[:1]})")
                sys.exit(1)
            sent += 1
        if sent >= rows:
            break
    total = time.perf_counter() - start
    return total, latencies


# ------------------------------------------------------------------------------------------ main
def _setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    value: Any = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            pass
    return key, value


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="failed rows ours publishes (default 100000)")
    parser.add_argument("--peer-rows", type=int, default=10_000,
                        help="rows the synchronous peer publishes; extrapolated to --rows (default 10000)")
    parser.add_argument("--partitions", type=int, default=2,
                        help="partitions of the failed rows' DataFrame (default 2: this machine's cores)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="publishes per writer before the measured ones, the first of them cold (default 3)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="measured publishes per writer after the warm-up; their median is ours (default 5)")
    parser.add_argument("--writers", default="jvm,python",
                        help="dead_letter.writer values to measure, the first is ours (default jvm,python)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="publish_dataframe batch_size (default: the hook's default)")
    parser.add_argument("--producer-setting", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="librdkafka setting for our sink, overriding KafkaSink's defaults (repeatable)")
    parser.add_argument("--skip-peer", action="store_true", help="measure ours only (no bench line)")
    parser.add_argument("--skip-floor", action="store_true",
                        help="do not measure Kafka's floor (benchmarks/kafka_floor/KafkaFloor.java)")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the benchmark topics")
    args = parser.parse_args(argv)
    args.writers = [w.strip() for w in args.writers.split(",") if w.strip()]
    if args.rounds < 1 or args.warmup < 1 or not args.writers:
        parser.error("--rounds and --warmup must be >= 1 and --writers name at least one writer")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    bootstrap = kafka_bootstrap()
    producer_settings = dict(args.producer_setting)
    peer_rows = min(args.peer_rows, args.rows)
    run = uuid.uuid4().hex[:10]
    peer_topic = f"bench-dlq-peer-{run}"

    print(f"making {args.rows:,} rejected order rows as Arrow batches of {ROW_BATCH:,} (not timed) ...")
    t0 = time.perf_counter()
    batches = build_rejected_rows(args.rows)
    sample = [envelope_of(row, datetime.now(UTC)) for row in batches[0].slice(0, 1000).to_pylist()]
    avg_bytes = sum(len(env.to_json().encode()) for env in sample) / len(sample)
    print(f"  made in {time.perf_counter() - t0:.1f} s; ~{avg_bytes:.0f} bytes of envelope JSON per row")
    print(f"broker {bootstrap}; fresh topics of {PARTITIONS} partitions per round")
    kept: list[str] = []
    try:
        line = compare(args, batches, bootstrap, run, peer_topic, producer_settings, peer_rows, kept)
    finally:
        if not args.keep_topics:
            delete_topics(bootstrap, kept)
    if line is None:  # --skip-peer
        return 0
    print(line)  # the last line of the output
    return 0


def compare(args: argparse.Namespace, batches: list[Any], bootstrap: str, run: str, peer_topic: str,
            producer_settings: dict[str, Any], peer_rows: int, kept: list[str]) -> str | None:
    """Run ours (and verify it), then the peer; print the report; return the ``bench`` line (None with
    ``--skip-peer``). Exits 1 when a side lost or failed to deliver envelopes. ``kept`` receives the topics
    left for the caller to delete."""
    # ---- ours
    settings_note = f", producer overrides {producer_settings}" if producer_settings else ""
    print(f"\nours: DeadLetterHook.publish_dataframe of a cached DataFrame, writers {', '.join(args.writers)}, "
          f"{args.warmup} warm-up (the first cold) + {args.rounds} measured rounds each, "
          f"batch_size={args.batch_size:,}{settings_note}")
    print(f"  a quiet start: {settle()}")
    canary_before = cpu_canary()
    rounds = run_ours(args, batches, bootstrap, run, producer_settings)
    canary_after = cpu_canary()
    print(f"  machine speed: CPU canary {canary_before:.3f} s before ours, {canary_after:.3f} s after (a fixed "
          f"{CANARY_LOOPS:,}-iteration Python loop, median of 5: the lower, the faster this machine ran)")
    kept += [r[-1][2] for r in rounds.values()]
    summary: dict[str, tuple[float, float, float]] = {}
    for writer, results in rounds.items():
        warm = [r[0] for r in results[args.warmup:]]
        warm_lat = [lat for r in results[args.warmup:] for lat in r[1]]
        median = statistics.median(warm)
        summary[writer] = (results[0][0], median, percentile(warm_lat, 99))
        print(f"  {writer}: cold {results[0][0]:.3f} s ({args.rows / results[0][0]:,.0f}/s); warm median "
              f"{median:.3f} s = {args.rows / median:,.0f} envelopes/s (measured "
              f"rounds: {', '.join(f'{w:.3f}' for w in warm)} s); warm batch latency p50 {_ms(percentile(warm_lat, 50))} "
              f"p99 {_ms(percentile(warm_lat, 99))} max {_ms(max(warm_lat))}")
    ours_writer = args.writers[0]
    cold_s, ours_s, p99 = summary[ours_writer]
    ours_rps = args.rows / ours_s
    print(f"  peak RSS of this (driver) process: {peak_rss_mb():.0f} MiB")

    print("  verifying the last round of each writer with an independent consumer (fresh group, earliest; "
          "not timed) ...")
    for writer, results in rounds.items():
        problems = verify_ours(batches, bootstrap, results[-1][2])
        if problems:
            for problem in problems:
                print(f"FAIL: ours ({writer}): {problem}")
            sys.exit(1)  # main's finally still deletes the topics
        print(f"  verified ({writer}): {args.rows:,} messages, keys unique and complete, 2,000 sampled values and "
              f"headers byte for byte those of build_envelope + to_json + kafka_headers")

    if not args.skip_floor:
        prefix = f"bench-dlq-floor-{run}"
        kept += [f"{prefix}-{k}" for k in range(args.warmup + args.rounds)]
        print(f"\nKafka's floor: Kafka's Java producer alone sending the {args.rows:,} messages of ours' last round "
              f"(read back first, not timed: nothing built, no Spark) from {args.partitions} threads, one producer "
              f"each, {args.warmup} warm-up (the first cold) + {args.rounds} measured rounds, each to a fresh topic")
        print(f"  a quiet start: {settle()}")
        floor = run_floor(args, bootstrap, rounds[ours_writer][-1][2], prefix, producer_settings)
        floor_s = statistics.median(floor[args.warmup:])
        print(f"  cold {floor[0]:.3f} s; warm median {floor_s:.3f} s = {args.rows / floor_s:,.0f} messages/s "
              f"(measured rounds: {', '.join(f'{w:.3f}' for w in floor[args.warmup:])} s)")
        print(f"  ours ({ours_writer} writer, warm median) takes {ours_s / floor_s:.2f}x the floor's time: "
              f"{ours_rps:,.0f} vs {args.rows / floor_s:,.0f} messages/s ({ours_rps * floor_s / args.rows:.0%} of "
              f"Kafka's own rate here; the rate goal, {GOAL_RATE:,}/s, is {GOAL_RATE * floor_s / args.rows:.0%} of it)")
        print(result_line(FLOOR_BENCH_ID, ours_s, floor_s))

    if args.skip_peer:
        print("\n--skip-peer: no comparison line")
        return None

    # ---- peer
    create_topics(bootstrap, [peer_topic])
    kept.append(peer_topic)
    print(f"\npeer: build_envelope per row, Producer(enable.idempotence=true, acks=all), produce()+flush() per "
          f"record, measured on {peer_rows:,} rows")
    peer_measured_s, rec_lat = run_peer(batches, peer_rows, bootstrap, peer_topic)
    peer_rps = peer_rows / peer_measured_s
    peer_s = args.rows / peer_rps
    delivered = topic_message_count(bootstrap, peer_topic)
    if delivered != peer_rows:
        print(f"FAIL: peer: topic holds {delivered} messages, expected {peer_rows}")
        sys.exit(1)
    print(f"  {peer_rows:,} rows in {peer_measured_s:.3f} s = {peer_rps:,.0f} rows/s "
          f"(measured on {peer_rows:,} rows)")
    print(f"  per-record latency (build + produce + flush): p50 {_ms(percentile(rec_lat, 50))}  "
          f"p99 {_ms(percentile(rec_lat, 99))}  max {_ms(max(rec_lat))}")
    print(f"  peer seconds for {args.rows:,} rows extrapolated: {args.rows:,} / {peer_rps:,.0f} rows/s "
          f"= {peer_s:.1f} s")

    # ---- comparison
    speedup = peer_s / ours_s
    print(f"\nours ({ours_writer} writer, warm median) {ours_rps:,.0f} envelopes/s vs peer {peer_rps:,.0f} "
          f"envelopes/s: ours is {speedup:.1f}x faster (ratio ours/peer = {ours_s / peer_s:.4f}); cold, the "
          f"first publish of a fresh session: {cold_s:.3f} s, {peer_s / cold_s:.1f}x")
    speed_ok, p99_ok, rate_ok = speedup >= GOAL_SPEEDUP, p99 < GOAL_P99_S, ours_rps >= GOAL_RATE
    print(f"goals (issue #15, P7): >= {GOAL_SPEEDUP:.0f}x faster [{'ok' if speed_ok else 'MISSED'}: "
          f"{speedup:.1f}x], >= {GOAL_RATE:,.0f} envelopes/s [{'ok' if rate_ok else 'MISSED'}: {ours_rps:,.0f}] -> "
          f"{'goal met' if speed_ok and rate_ok else 'goal NOT met'}; this benchmark's own guard: p99 batch "
          f"latency < {_ms(GOAL_P99_S)} [{'ok' if p99_ok else 'MISSED'}: {_ms(p99)}]")
    return result_line(BENCH_ID, ours_s, peer_s)


if __name__ == "__main__":
    sys.exit(main())
