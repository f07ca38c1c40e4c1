namespace Loom.Inference;

/// <summary>
/// Runs body(0..count−1) on the calling thread plus thread-pool helpers, with work items allocated once so that
/// a call allocates nothing (Parallel.For allocates its loop state on every call, i.e. on every token and layer).
/// Indices are handed out one at a time, so uneven items balance themselves.
/// </summary>
internal sealed class ParallelRange : IDisposable
{
    private readonly Helper[] _helpers;
    private readonly ManualResetEventSlim _finished = new(false);
    private Action<int>? _body;
    private int _count;
    private int _next;
    private int _running;
    private Exception? _failure;

    public ParallelRange(int maxHelpers)
    {
        _helpers = new Helper[Math.Max(0, maxHelpers)];
        for (int i = 0; i < _helpers.Length; i++) _helpers[i] = new Helper(this);
    }

    public void For(int count, Action<int> body)
    {
        _body = body;
        _count = count;
        _next = 0;
        _failure = null;
        int helpers = Math.Min(_helpers.Length, count - 1);
        if (helpers > 0)
        {
            _finished.Reset();
            _running = helpers;
            for (int i = 0; i < helpers; i++) ThreadPool.UnsafeQueueUserWorkItem(_helpers[i], preferLocal: false);
        }
        Drain();
        if (helpers > 0) _finished.Wait();
        _body = null;
        if (_failure is { } failure) throw new AggregateException(failure);
    }

    private void Drain()
    {
        try
        {
            for (int i; (i = Interlocked.Increment(ref _next) - 1) < _count;) _body!(i);
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref _failure, e, null);
            _next = _count; // stop handing out work
        }
    }

    public void Dispose() => _finished.Dispose();

    private sealed class Helper(ParallelRange owner) : IThreadPoolWorkItem
    {
        public void Execute()
        {
            owner.Drain();
            if (Interlocked.Decrement(ref owner._running) == 0) owner._finished.Set();
        }
    }
}
