using System.Diagnostics;
using System.Runtime.Intrinsics;
using Loom.Core.IO;

namespace Loom.Core.Threading;

/// <summary>
/// Measures how fast the pool's threads can stream memory they only read: the ceiling a memory-bound decode step is
/// held to, since it reads every weight once and does little work per byte. On a shared machine that ceiling moves
/// by half within minutes, so a decode rate means something only beside a reading taken at the same moment.
/// </summary>
public sealed unsafe class MemoryReadProbe : IDisposable
{
    /// <summary>The default buffer: 256 MiB, several times any current last-level cache, so every pass comes from DRAM.</summary>
    public const long DefaultBytes = 256L << 20;

    /// <summary>Pieces a pass is split into: enough to balance the threads, each a long sequential stream.</summary>
    private const int Chunks = 64;

    private readonly WeightArena _memory;
    private readonly ReadWork _work;
    private bool _disposed;

    public MemoryReadProbe(long bytes = DefaultBytes)
    {
        // Whole 128-byte steps per chunk, so the loop needs no tail.
        if (bytes < Chunks * 128L) throw new ArgumentOutOfRangeException(nameof(bytes), bytes, $"the probe needs at least {Chunks * 128} bytes");
        long floats = bytes / sizeof(float) / (Chunks * 32) * (Chunks * 32);
        // In the pages weights get (2 MiB where the system grants them), which stream faster than 4 KiB ones.
        _memory = new WeightArena(floats * sizeof(float));
        var data = (float*)_memory.Allocate(floats * sizeof(float));
        // Written once, so every page is mapped before any timing.
        for (long done = 0; done < floats; done += int.MaxValue)
            new Span<float>(data + done, (int)Math.Min(floats - done, int.MaxValue)).Fill(1f);
        _work = new ReadWork(data, floats);
    }

    /// <summary>Bytes one pass reads.</summary>
    public long Bytes => _work.Floats * sizeof(float);

    /// <summary>Reads the whole buffer once on <paramref name="pool"/>'s threads.</summary>
    public void ReadOnce(LoomThreadPool pool)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        pool.Run(_work, Chunks);
    }

    /// <summary>The median of <paramref name="passes"/> timed passes, in GB/s (10^9 bytes per second).</summary>
    public double Measure(LoomThreadPool pool, int passes = 3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(passes, 1);
        var rates = new double[passes];
        for (int i = 0; i < passes; i++)
        {
            long start = Stopwatch.GetTimestamp();
            ReadOnce(pool);
            rates[i] = Bytes / Stopwatch.GetElapsedTime(start).TotalSeconds / 1e9;
        }
        return Statistics.Median(rates);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _memory.Dispose();
    }

    private sealed class ReadWork(float* data, long floats) : IParallelWork
    {
        public long Floats => floats;
        /// <summary>Where the sums go, so the loads cannot be optimised away.</summary>
        public float Sink;

        public void Execute(int chunk)
        {
            long start = floats * chunk / Chunks, end = floats * (chunk + 1) / Chunks;
            // Four independent accumulators hide the add latency, so the loop is limited by loads alone.
            Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (long i = start; i < end; i += 32)
            {
                s0 += Vector256.Load(data + i);
                s1 += Vector256.Load(data + i + 8);
                s2 += Vector256.Load(data + i + 16);
                s3 += Vector256.Load(data + i + 24);
            }
            Sink = Vector256.Sum(s0 + s1 + s2 + s3);
        }
    }
}
