using Loom.Core;
using Loom.Core.Kernels;
using Loom.Core.Threading;

namespace Loom.Tests;

/// <summary>The pool splits rows without changing any result, survives concurrent callers, and reports failures.</summary>
public unsafe class KernelThreadingTests
{
    private sealed class Counter(int chunks) : IParallelWork
    {
        public readonly int[] Hits = new int[chunks];
        public void Execute(int chunk) => Interlocked.Increment(ref Hits[chunk]);
    }

    [Fact]
    public void EveryChunkRunsExactlyOnce()
    {
        using var pool = new LoomThreadPool(3);
        for (int round = 0; round < 50; round++)
        {
            var work = new Counter(1 + round * 7 % 40);
            pool.Run(work, work.Hits.Length);
            Assert.All(work.Hits, h => Assert.Equal(1, h));
        }
    }

    private sealed class Failing : IParallelWork
    {
        public void Execute(int chunk)
        {
            if (chunk == 5) throw new InvalidOperationException("chunk 5 failed");
        }
    }

    [Fact]
    public void AFailingChunkSurfacesToTheCaller()
    {
        using var pool = new LoomThreadPool(2);
        var e = Assert.Throws<InvalidOperationException>(() => pool.Run(new Failing(), 20));
        Assert.Contains("chunk 5", e.Message);
        var after = new Counter(8);
        pool.Run(after, 8); // the pool still works afterwards
        Assert.All(after.Hits, h => Assert.Equal(1, h));
    }

    [Theory]
    [InlineData(GgmlType.Q8_0, 1)]
    [InlineData(GgmlType.Q4_K, 1)]
    [InlineData(GgmlType.Q4_0, 7)]
    [InlineData(GgmlType.F16, 3)]
    public void ThreadCountDoesNotChangeResults(GgmlType type, int tokens)
    {
        const int rows = 333;
        int cols = GgmlTypeInfo.BlockSize(type) == 256 ? 1024 : 1056;
        var rng = new Random(7);
        var weights = KernelMatrixTests.RandomWeights(type, rows, cols, rng);
        var x = KernelMatrixTests.RandomInputs(tokens * cols, rng);
        var single = new float[tokens * rows];
        var multi = new float[tokens * rows];
        using var one = new LoomThreadPool(1);
        using var three = new LoomThreadPool(3);
        fixed (byte* w = weights)
        fixed (float* xp = x)
        fixed (float* y1 = single)
        fixed (float* y3 = multi)
        {
            var matrix = new WeightMatrix(type, w, rows, cols);
            matrix.Multiply(xp, y1, tokens, one);
            matrix.Multiply(xp, y3, tokens, three);
        }
        Assert.Equal(single, multi);
    }

    /// <summary>
    /// Matrices sharing an input (query/key/value, gate/up) in one call give each output bit for bit what a call of its
    /// own gives, on every path and thread count, also when their types mix (Q4_K_M's Q4_K and Q6_K) or quantize the
    /// input differently (then they run one after the other).
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q8_0, GgmlType.Q8_0, GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_K, GgmlType.Q4_K, GgmlType.Q6_K)]
    [InlineData(GgmlType.Q4_0, GgmlType.Q8_0, GgmlType.Q4_1)]
    [InlineData(GgmlType.F16, GgmlType.F32, GgmlType.F16)]
    [InlineData(GgmlType.Q8_0, GgmlType.Q4_K, null)]
    public void SharedInputCallsMatchSeparateCalls(GgmlType firstType, GgmlType secondType, GgmlType? thirdType)
    {
        const int cols = 1024;
        int[] rows = [96, 40, 72];
        var types = thirdType is { } t3 ? new[] { firstType, secondType, t3 } : [firstType, secondType];
        var rng = new Random(21);
        var weights = types.Select((type, i) => KernelMatrixTests.RandomWeights(type, rows[i], cols, rng)).ToArray();
        using var one = new LoomThreadPool(1);
        using var two = new LoomThreadPool(2);
        foreach (int tokens in new[] { 1, 5, 9, 40 })
        {
            var x = KernelMatrixTests.RandomInputs(tokens * cols, rng);
            foreach (var isa in new[] { KernelIsa.Portable, KernelIsa.Avx2, KernelIsa.Avx512 }.Where(KernelIsaSupport.IsSupported))
                foreach (var pool in new[] { one, two })
                {
                    var separate = types.Select((_, i) => new float[tokens * rows[i]]).ToArray();
                    var shared = types.Select((_, i) => new float[tokens * rows[i]]).ToArray();
                    fixed (byte* w0 = weights[0]) fixed (byte* w1 = weights[1]) fixed (byte* w2 = weights.Length > 2 ? weights[2] : null)
                    fixed (float* xp = x)
                    fixed (float* s0 = separate[0]) fixed (float* s1 = separate[1]) fixed (float* s2 = separate.Length > 2 ? separate[2] : null)
                    fixed (float* h0 = shared[0]) fixed (float* h1 = shared[1]) fixed (float* h2 = shared.Length > 2 ? shared[2] : null)
                    {
                        var m0 = new WeightMatrix(types[0], w0, rows[0], cols);
                        var m1 = new WeightMatrix(types[1], w1, rows[1], cols);
                        var m2 = types.Length > 2 ? new WeightMatrix(types[2], w2, rows[2], cols) : null;
                        m0.Multiply(xp, s0, tokens, pool, isa);
                        m1.Multiply(xp, s1, tokens, pool, isa);
                        m2?.Multiply(xp, s2, tokens, pool, isa);
                        WeightMatrix.MultiplyShared(xp, tokens, pool, isa, m0, h0, m1, h1, m2, h2);
                    }
                    for (int i = 0; i < types.Length; i++)
                        Assert.True(separate[i].AsSpan().SequenceEqual(shared[i]), $"{types[i]} (matrix {i}), {tokens} tokens, {isa}, {pool.ThreadCount} threads");
                }
        }
    }

    [Fact]
    public void ConcurrentCallersOnOnePoolGetTheirOwnResults()
    {
        const int rows = 256, cols = 1024;
        var rng = new Random(11);
        var weights = KernelMatrixTests.RandomWeights(GgmlType.Q8_0, rows, cols, rng);
        var inputs = Enumerable.Range(0, 4).Select(_ => KernelMatrixTests.RandomInputs(2 * cols, rng)).ToArray();
        var expected = new float[4][];
        using var pool = new LoomThreadPool(2);
        fixed (byte* w = weights)
        {
            var matrix = new WeightMatrix(GgmlType.Q8_0, w, rows, cols);
            nint data = (nint)w;
            for (int i = 0; i < 4; i++)
            {
                expected[i] = new float[2 * rows];
                fixed (float* xp = inputs[i])
                fixed (float* yp = expected[i])
                    matrix.Multiply(xp, yp, 2, pool);
            }
            var failures = new System.Collections.Concurrent.ConcurrentBag<string>();
            var threads = Enumerable.Range(0, 4).Select(i => new Thread(() =>
            {
                var y = new float[2 * rows];
                for (int round = 0; round < 30; round++)
                {
                    fixed (float* xp = inputs[i])
                    fixed (float* yp = y)
                        matrix.Multiply(xp, yp, 2, pool);
                    if (!y.AsSpan().SequenceEqual(expected[i])) failures.Add($"caller {i} round {round}");
                }
            })).ToArray();
            foreach (var t in threads) t.Start();
            foreach (var t in threads) t.Join();
            Assert.Empty(failures);
        }
    }

    private sealed class Nested(LoomThreadPool pool) : IParallelWork
    {
        public readonly Counter Inner = new(6 * 4);
        public void Execute(int chunk) => pool.Run(new Slice(Inner, chunk), 4);

        private sealed class Slice(Counter inner, int outer) : IParallelWork
        {
            public void Execute(int chunk) => inner.Execute(outer * 4 + chunk);
        }
    }

    [Fact]
    public void RunInsideAChunkRunsInlineWithoutCorruptingTheOuterRun()
    {
        using var pool = new LoomThreadPool(3);
        var work = new Nested(pool);
        pool.Run(work, 6);
        Assert.All(work.Inner.Hits, h => Assert.Equal(1, h));
    }

    [Fact]
    public void PoolRejectsBadThreadCounts()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new LoomThreadPool(0));
        Assert.True(LoomThreadPool.Shared.ThreadCount >= 1);
    }
}
