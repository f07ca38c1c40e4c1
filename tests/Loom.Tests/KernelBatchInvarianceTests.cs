using Loom.Core;
using Loom.Core.Kernels;
using Loom.Core.Threading;

namespace Loom.Tests;

/// <summary>
/// Batch invariance: a token's output row is bit-identical whatever number of tokens shares the Multiply call, whatever
/// its position among them (four-token kernel, one-token kernel, tail), and whatever the thread count.
/// </summary>
public unsafe class KernelBatchInvarianceTests
{
    private const int Rows = 37; // two full row tiles and a ragged one

    public static TheoryData<GgmlType, string> Cases()
    {
        var data = new TheoryData<GgmlType, string>();
        foreach (var type in KernelMatrixTests.AllTypes)
            foreach (var isa in Enum.GetNames<KernelIsa>())
                data.Add(type, isa);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EachTokenMatchesItsOneTokenCallBitForBit(GgmlType type, string isaName)
    {
        var isa = Enum.Parse<KernelIsa>(isaName);
        if (!KernelIsaSupport.IsSupported(isa)) return; // runs where the CPU has it (AVX-512 on CI's Zen 5)
        int cols = KernelMatrixTests.ColsFor(type);
        var rng = new Random(4321 + (int)type);
        var weights = KernelMatrixTests.RandomWeights(type, Rows, cols, rng);
        const int MaxTokens = 17;
        var x = KernelMatrixTests.RandomInputs(MaxTokens * cols, rng);
        var alone = new float[MaxTokens * Rows];
        using var single = new LoomThreadPool(1);
        using var three = new LoomThreadPool(3);
        fixed (byte* w = weights)
        fixed (float* xp = x)
        fixed (float* ap = alone)
        {
            var matrix = new WeightMatrix(type, w, Rows, cols);
            for (int t = 0; t < MaxTokens; t++)
                matrix.Multiply(xp + t * cols, ap + t * Rows, 1, single, isa);
            foreach (int tokens in new[] { 1, 2, 3, 4, 5, 7, 9, 17 }) // 8-row tiles from 8 tokens, 16-row (AVX-512) from 16
                foreach (var pool in new[] { single, three })
                {
                    var y = new float[tokens * Rows];
                    fixed (float* yp = y)
                        matrix.Multiply(xp, yp, tokens, pool, isa);
                    for (int t = 0; t < tokens; t++)
                        for (int r = 0; r < Rows; r++)
                        {
                            int expected = BitConverter.SingleToInt32Bits(alone[t * Rows + r]);
                            int got = BitConverter.SingleToInt32Bits(y[t * Rows + r]);
                            Assert.True(expected == got,
                                $"{type}/{isa} tokens={tokens} threads={pool.ThreadCount} token {t} row {r}: {y[t * Rows + r]:R} batched, {alone[t * Rows + r]:R} alone");
                        }
                }
        }
    }

    /// <summary>
    /// Q8_0 levels at their extremes (−128 or 127 everywhere) against activation levels at ±127: no byte dot of any
    /// tile or one-token kernel may saturate, so a batch gives the one-token kernel's bits and the exact sum, from GGML
    /// rows and from interleaved ones.
    /// </summary>
    [Theory]
    [InlineData(0x80, 1f)]
    [InlineData(0x80, -1f)]
    [InlineData(0x7F, 1f)]
    [InlineData(0x7F, -1f)]
    public void Q8_0BatchesMatchOneTokenAtExtremeLevels(byte level, float input)
    {
        const int rows = 32, cols = 512, tokens = 17;
        var rng = new Random(level);
        var weights = KernelMatrixTests.RandomWeights(GgmlType.Q8_0, rows, cols, rng);
        for (int block = 0; block < weights.Length / 34; block++)
        {
            BitConverter.TryWriteBytes(weights.AsSpan(block * 34, 2), (ushort)0x2000); // scale 2^-7
            weights.AsSpan(block * 34 + 2, 32).Fill(level);
        }
        var x = new float[tokens * cols];
        Array.Fill(x, input);
        using var pool = new LoomThreadPool(2);
        foreach (bool interleaved in new[] { false, true })
        {
            var copy = (byte[])weights.Clone();
            fixed (byte* w = copy)
            fixed (float* xp = x)
            {
                var matrix = interleaved ? WeightMatrix.CreateOptimized(GgmlType.Q8_0, w, rows, cols) : new WeightMatrix(GgmlType.Q8_0, w, rows, cols);
                foreach (var isa in Enum.GetValues<KernelIsa>().Where(KernelIsaSupport.IsSupported))
                {
                    var alone = new float[rows];
                    var batch = new float[tokens * rows];
                    fixed (float* a = alone) matrix.Multiply(xp, a, 1, pool, isa);
                    fixed (float* b = batch) matrix.Multiply(xp, b, tokens, pool, isa);
                    float expected = (sbyte)level * 127f * input * cols / 128f / 127f; // Σ w·x with d_w = 2^-7, d_x = 1/127
                    for (int t = 0; t < tokens; t++)
                        for (int r = 0; r < rows; r++)
                        {
                            Assert.Equal(BitConverter.SingleToInt32Bits(alone[r]), BitConverter.SingleToInt32Bits(batch[t * rows + r]));
                            Assert.True(Math.Abs(batch[t * rows + r] - expected) <= 1e-3f * Math.Abs(expected),
                                $"interleaved={interleaved} {isa} token {t} row {r}: {batch[t * rows + r]}, expected {expected}");
                        }
                }
            }
        }
    }

    /// <summary>
    /// The same call keeps giving the same bits while the JIT moves the kernels from tier 0 through instrumented code
    /// to tier 1 (seconds of repeated calls, as a decode loop makes). Before the one-token Q4_0/Q5_0/Q8_0 entry
    /// points were compiled fully optimized from the start, this failed in about half of the runs on .NET 10.0.12:
    /// after a few hundred calls every Q4_0 product came out wrong (row 0: −1.1133 where the first call and the
    /// portable path give 0.0763).
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q4_0, false)]
    [InlineData(GgmlType.Q8_0, false)]
    [InlineData(GgmlType.Q4_K, false)]
    [InlineData(GgmlType.Q6_K, false)]
    [InlineData(GgmlType.Q4_1, false)]
    [InlineData(GgmlType.F16, false)]
    [InlineData(GgmlType.Q8_0, true)]
    [InlineData(GgmlType.Q4_0, true)]
    [InlineData(GgmlType.Q5_0, true)]
    [InlineData(GgmlType.F16, true)]
    public void RepeatedCallsStayIdenticalThroughJitTierUp(GgmlType type, bool interleaved)
    {
        const int rows = 96, cols = 1024, maxTokens = 40;
        var rng = new Random(21);
        var weights = KernelMatrixTests.RandomWeights(type, rows, cols, rng);
        var x = KernelMatrixTests.RandomInputs(maxTokens * cols, rng);
        using var one = new LoomThreadPool(1);
        using var two = new LoomThreadPool(2);
        var first = new float[rows];
        var y = new float[maxTokens * rows];
        var failures = new List<string>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        fixed (byte* w = weights)
        fixed (float* xp = x)
        fixed (float* fp = first)
        fixed (float* yp = y)
        {
            var isa = KernelIsaSupport.Best;
            var matrix = interleaved ? WeightMatrix.CreateOptimized(type, w, rows, cols) : new WeightMatrix(type, w, rows, cols);
            Assert.Equal(interleaved && KernelIsaSupport.Best != KernelIsa.Portable, matrix.Interleaved || matrix.FiniteHalves);
            matrix.Multiply(xp, fp, 1, one, isa);
            for (int call = 0; clock.Elapsed.TotalSeconds < 2.5 && failures.Count < 3; call++)
                foreach (int tokens in new[] { 1, 5, maxTokens })
                    foreach (var pool in new[] { one, two })
                    {
                        matrix.Multiply(xp, yp, tokens, pool, isa);
                        for (int r = 0; r < rows; r++)
                            if (BitConverter.SingleToInt32Bits(y[r]) != BitConverter.SingleToInt32Bits(first[r]))
                            {
                                failures.Add($"call {call}, {tokens} tokens, {pool.ThreadCount} threads, row {r}: {y[r]:R}, first call {first[r]:R}");
                                break;
                            }
                    }
        }
        Assert.True(failures.Count == 0, string.Join("; ", failures));
    }
}
