namespace Loom.Core.Threading;

/// <summary>A unit of data-parallel work: <see cref="Execute"/> is called once for every chunk index, from any pool thread.</summary>
public interface IParallelWork
{
    void Execute(int chunk);
}

/// <summary>
/// A small pool of persistent worker threads for compute kernels. <see cref="Run"/> hands out chunk indices
/// dynamically (an atomic counter) and the calling thread works too, so a pool of N threads uses N-1 workers.
/// Idle workers spin briefly (kernels arrive back to back during a forward pass) and then sleep.
/// A Run that finds the pool busy (another caller, or a call from inside a chunk) does its work on the calling thread,
/// so concurrent callers are safe and never deadlock.
/// </summary>
public sealed class LoomThreadPool : IDisposable
{
    private static LoomThreadPool? s_shared;
    private static readonly object s_sharedLock = new();

    private readonly Thread[] _workers;
    private readonly object _runLock = new();
    private readonly object _sleepLock = new();
    private IParallelWork? _work;
    private int _chunkCount;
    private int _nextChunk;
    private int _busyWorkers;
    private long _generation;
    private int _sleepers;
    private volatile bool _disposed;
    private Exception? _failure;

    /// <summary>How long (in spin iterations) an idle worker polls for new work before it sleeps.</summary>
    private const int SpinIterations = 20_000;

    public int ThreadCount { get; }

    public LoomThreadPool(int threadCount)
    {
        if (threadCount < 1 || threadCount > 1024)
            throw new ArgumentOutOfRangeException(nameof(threadCount), threadCount, "thread count must be between 1 and 1024");
        ThreadCount = threadCount;
        _workers = new Thread[threadCount - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            _workers[i] = new Thread(WorkerLoop) { IsBackground = true, Name = $"Loom worker {i + 1}" };
            _workers[i].Start();
        }
    }

    /// <summary>The pool kernels use unless told otherwise; <see cref="Environment.ProcessorCount"/> threads until <see cref="SetSharedThreadCount"/> changes it.</summary>
    public static LoomThreadPool Shared
    {
        get
        {
            var pool = Volatile.Read(ref s_shared);
            if (pool is not null) return pool;
            lock (s_sharedLock)
                return s_shared ??= new LoomThreadPool(Environment.ProcessorCount);
        }
    }

    /// <summary>Replaces the shared pool with one of <paramref name="threadCount"/> threads (the old pool finishes its current work and stops).</summary>
    public static void SetSharedThreadCount(int threadCount)
    {
        var fresh = new LoomThreadPool(threadCount);
        LoomThreadPool? old;
        lock (s_sharedLock)
        {
            old = s_shared;
            s_shared = fresh;
        }
        old?.Dispose();
    }

    /// <summary>Calls <c>work.Execute(i)</c> for every i in [0, <paramref name="chunkCount"/>) and returns when all are done.</summary>
    public void Run(IParallelWork work, int chunkCount)
    {
        ArgumentNullException.ThrowIfNull(work);
        if (chunkCount <= 0) return;
        // Monitor is re-entrant, so a Run nested inside this thread's own chunk must be caught before TryEnter.
        if (chunkCount == 1 || _workers.Length == 0 || _disposed || Monitor.IsEntered(_runLock) || !Monitor.TryEnter(_runLock))
        {
            for (int i = 0; i < chunkCount; i++) work.Execute(i);
            return;
        }
        try
        {
            _work = work;
            _chunkCount = chunkCount;
            _failure = null;
            Volatile.Write(ref _nextChunk, 0);
            Volatile.Write(ref _busyWorkers, _workers.Length);
            Interlocked.Increment(ref _generation);
            if (Volatile.Read(ref _sleepers) > 0)
                lock (_sleepLock) Monitor.PulseAll(_sleepLock);

            Exception? own = null;
            try { DrainChunks(work); }
            catch (Exception e) { own = e; Volatile.Write(ref _nextChunk, chunkCount); }

            var spin = new SpinWait();
            while (Volatile.Read(ref _busyWorkers) > 0) spin.SpinOnce(-1);
            _work = null;
            var failure = own ?? _failure;
            if (failure is not null)
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failure).Throw();
        }
        finally
        {
            Monitor.Exit(_runLock);
        }
    }

    private void DrainChunks(IParallelWork work)
    {
        int count = _chunkCount;
        for (int i = Interlocked.Increment(ref _nextChunk) - 1; i < count; i = Interlocked.Increment(ref _nextChunk) - 1)
            work.Execute(i);
    }

    private void WorkerLoop()
    {
        long seen = 0;
        while (true)
        {
            long generation = WaitForWork(seen);
            if (_disposed) return;
            seen = generation;
            try
            {
                DrainChunks(_work!);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _failure, e, null);
                Volatile.Write(ref _nextChunk, _chunkCount);
            }
            Interlocked.Decrement(ref _busyWorkers);
        }
    }

    private long WaitForWork(long seen)
    {
        for (int i = 0; i < SpinIterations; i++)
        {
            long g = Volatile.Read(ref _generation);
            if (g != seen || _disposed) return g;
            Thread.SpinWait(8);
        }
        lock (_sleepLock)
        {
            Interlocked.Increment(ref _sleepers);
            try
            {
                long g;
                while ((g = Volatile.Read(ref _generation)) == seen && !_disposed)
                    Monitor.Wait(_sleepLock);
                return g;
            }
            finally
            {
                Interlocked.Decrement(ref _sleepers);
            }
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        lock (_runLock)
        {
            _disposed = true;
            lock (_sleepLock) Monitor.PulseAll(_sleepLock);
        }
    }
}
