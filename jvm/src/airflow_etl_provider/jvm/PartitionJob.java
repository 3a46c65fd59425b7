/*
 * One Spark job that runs a function once per partition of a Dataset's internal rows: how both JVM writers
 * (PostgresCopyStager, KafkaDeadLetterPublisher) submit their work.
 */
package airflow_etl_provider.jvm;

import java.io.Serializable;

import scala.reflect.ClassTag$;
import scala.runtime.AbstractFunction2;

import org.apache.spark.TaskContext;
import org.apache.spark.rdd.RDD;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.catalyst.InternalRow;

/**
 * A function of (task context, a partition's rows) to that partition's result, serialized to the executors and
 * run as one job by {@link #run}.
 *
 * <p>Why a class of its own and SparkContext.runJob, not JavaRDD.mapPartitions(...).collect(): those wrap the
 * function in Scala lambdas that Spark's ClosureCleaner checks on every job by reading and parsing the class
 * files of JavaRDDLike, RDD and SparkContext (ASM); a plain class is not a closure, there is nothing to read.
 * Measured on the Kafka publisher: a warm 200-row publish 116 / 118 ms -> 94 / 85 ms
 * (benchmarks/bench_dlq_kafka.py --rows 200 --warmup 10 --rounds 30, alternating pairs).
 *
 * @param <T> one partition's result
 */
abstract class PartitionJob<T> extends AbstractFunction2<TaskContext, scala.collection.Iterator<InternalRow>, T>
        implements Serializable {
    private static final long serialVersionUID = 1L;

    /**
     * Run this function on every partition of {@code rows}, as one job.
     *
     * @param rows the rows (their internal form: {@code queryExecution().toRdd()})
     * @param resultClass the class of T
     * @return the partitions' results, in partition order
     */
    @SuppressWarnings("unchecked")
    final T[] run(Dataset<Row> rows, Class<T> resultClass) {
        RDD<InternalRow> rdd = rows.queryExecution().toRdd();
        return (T[]) rdd.sparkContext().runJob(rdd, this, ClassTag$.MODULE$.apply(resultClass));
    }

    /**
     * One partition's work; may throw any exception, which fails the task unchanged (see {@link #apply}).
     *
     * @param ctx the task's context
     * @param rows the partition's rows
     * @return the partition's result
     * @throws Exception whatever the work throws
     */
    abstract T call(TaskContext ctx, scala.collection.Iterator<InternalRow> rows) throws Exception;

    /**
     * Runs {@link #call}; an exception it throws fails the task as it is: Scala's Function2 cannot declare
     * checked exceptions, so they are rethrown as they are, not wrapped (Spark's task runner takes any
     * Throwable), as from a FlatMapFunction's {@code call() throws Exception}, and the driver sees the very
     * class and text the writer threw (the COPY stager's SQLException, whose text the driver classifies; the
     * publisher's spool IOException).
     */
    @Override
    public final T apply(TaskContext ctx, scala.collection.Iterator<InternalRow> rows) {
        try {
            return call(ctx, rows);
        } catch (Exception err) {
            throw PartitionJob.<RuntimeException>unchanged(err);
        }
    }

    @SuppressWarnings("unchecked")
    private static <E extends Throwable> E unchanged(Throwable err) throws E {
        throw (E) err;
    }
}
