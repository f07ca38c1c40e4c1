using Loom.Core.Threading;

namespace Loom.Bench.SideBySide;

/// <summary>The memory read rate of the moment, on as many threads as the engines use (one pool per thread count).</summary>
internal sealed class ReadCeiling : IDisposable
{
    // Made at the first decode test: runs without one need not hold its 256 MiB.
    private MemoryReadProbe? _probe;
    private readonly Dictionary<int, LoomThreadPool> _pools = [];

    /// <summary>GB/s: the median of three passes over 256 MiB, a fraction of a second in all.</summary>
    public double Measure(int threads)
    {
        if (!_pools.TryGetValue(threads, out var pool)) _pools[threads] = pool = new LoomThreadPool(threads);
        _probe ??= new MemoryReadProbe();
        _probe.ReadOnce(pool); // wakes the pool's workers, so the timed passes start with every thread running
        return _probe.Measure(pool);
    }

    public void Dispose()
    {
        foreach (var pool in _pools.Values) pool.Dispose();
        _probe?.Dispose();
    }
}
