namespace Loom.Training;

/// <summary>
/// Dedicated worker threads for the training kernels (one pool per thread count, shared by the process). Threads take
/// the next work item as they become free, so a thread the OS delays (a shared machine) holds up only its own item; the
/// kernels are written so that results never depend on which thread ran which item. Dedicated threads keep the kernels
/// off the .NET thread pool that the rest of the process shares, and a call allocates nothing but its delegate.
/// </summary>
internal sealed class WorkerPool
{
    private static readonly Dictionary<int, WorkerPool> Pools = [];

    private readonly object _gate = new();
    private readonly SemaphoreSlim[] _start;
    private readonly CountdownEvent _done;
    private Action<int>? _body;
    private int _count;
    private int _next;
    private Exception? _failure;

    private WorkerPool(int threads)
    {
        Threads = threads;
        _start = new SemaphoreSlim[threads - 1];
        _done = new CountdownEvent(1);
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
            _body = body;
            _count = count;
            _next = -1;
            _failure = null;
            _done.Reset(Threads - 1);
            foreach (var start in _start) start.Release();
            try
            {
                RunShare();
            }
            finally
            {
                _done.Wait();
                _body = null;
            }
            if (_failure is { } failure) throw new AggregateException(failure);
        }
    }

    private void RunShare()
    {
        for (int i = Interlocked.Increment(ref _next); i < _count; i = Interlocked.Increment(ref _next)) _body!(i);
    }

    private void WorkerLoop(int worker)
    {
        while (true)
        {
            _start[worker - 1].Wait();
            try
            {
                RunShare();
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _failure, e, null);
            }
            finally
            {
                _done.Signal();
            }
        }
    }
}
