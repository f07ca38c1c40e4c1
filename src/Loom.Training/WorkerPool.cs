namespace Loom.Training;

/// <summary>
/// Dedicated worker threads for the training kernels (one pool per thread count, shared by the process). Threads take
/// the next work item as they become free, and a call returns as soon as every item is done: it never waits for a
/// worker the OS has not yet woken (on a shared machine that can take milliseconds), which then finds nothing left.
/// Idle workers poll for the next call for a few milliseconds before they sleep, so back-to-back calls find them awake.
/// The kernels are written so that results never depend on which thread ran which item. Dedicated threads keep the
/// kernels off the .NET thread pool that the rest of the process shares; a call allocates its delegate and one small
/// record of its progress.
/// </summary>
internal sealed class WorkerPool
{
    private static readonly Dictionary<int, WorkerPool> Pools = [];

    private readonly object _gate = new();
    private readonly SemaphoreSlim[] _start;
    // The call in progress (or the last one): workers woken late see its items all taken and go back to sleep.
    private volatile Work? _current;

    private WorkerPool(int threads)
    {
        Threads = threads;
        _start = new SemaphoreSlim[threads - 1];
        for (int w = 1; w < threads; w++)
        {
            _start[w - 1] = new SemaphoreSlim(0);
            int worker = w;
            new Thread(() => WorkerLoop(worker)) { IsBackground = true, Name = $"loom-train-{worker}" }.Start();
        }
    }

    public int Threads { get; }

    /// <summary>The process-wide pool with this many threads (the calling thread counts as one).</summary>
    public static WorkerPool Get(int threads)
    {
        threads = Math.Clamp(threads, 1, 256);
        lock (Pools)
        {
            if (!Pools.TryGetValue(threads, out var pool)) Pools[threads] = pool = new WorkerPool(threads);
            return pool;
        }
    }

    /// <summary>Runs body(0..count−1); concurrent callers take turns.</summary>
    public void For(int count, Action<int> body)
    {
        if (Threads == 1 || count <= 1)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        lock (_gate)
        {
            var work = new Work(body, count);
            _current = work;
            int helpers = Math.Min(_start.Length, count - 1);
            for (int w = 0; w < helpers; w++) _start[w].Release();
            work.RunItems();
            // Only items that another thread has already started can remain: wait for those alone.
            var spin = new SpinWait();
            while (Volatile.Read(ref work.Completed) < count) spin.SpinOnce();
            if (work.Failure is { } failure) throw new AggregateException(failure);
        }
    }

    private void WorkerLoop(int worker)
    {
        var start = _start[worker - 1];
        while (true)
        {
            // Calls come back to back during a step (a product packs, then multiplies): poll for a while before
            // sleeping, since a sleeping worker took tens of microseconds to wake and often missed a call's items.
            bool started = false;
            for (int i = 0; i < SpinIterations && !started; i++)
            {
                if (start.CurrentCount > 0) started = start.Wait(0);
                else Thread.SpinWait(8);
            }
            if (!started) start.Wait();
            _current?.RunItems();
        }
    }

    /// <summary>How many times (each a short pause) an idle worker polls for the next call before it sleeps.</summary>
    private const int SpinIterations = 20_000;

    private sealed class Work(Action<int> body, int count)
    {
        public int Completed;
        public Exception? Failure;
        private int _next = -1;

        public void RunItems()
        {
            for (int i = Interlocked.Increment(ref _next); i < count; i = Interlocked.Increment(ref _next))
            {
                try
                {
                    body(i);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref Failure, e, null);
                }
                finally
                {
                    Interlocked.Increment(ref Completed);
                }
            }
        }
    }
}
