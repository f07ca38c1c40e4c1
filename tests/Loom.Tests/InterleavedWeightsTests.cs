using Loom.Core;
using Loom.Core.Kernels;
using Loom.Core.Quantization;
using Loom.Core.Threading;
using Loom.Models.Architectures;
using Loom.Tests.Conformance;

namespace Loom.Tests;

/// <summary>
/// Q8_0/Q4_0/Q5_0 matrices reorganised in place into the interleaved row-lane layout must give bit for bit the products and
/// rows of the original layout (Q4_K/Q6_K: their own arithmetic, the same on every path), on every path, for any token count and thread count; shapes that cannot be interleaved
/// are left alone; and a model load must never change the file.
/// </summary>
[Collection(ConformanceCollection.Name)]
public unsafe class InterleavedWeightsTests(ConformanceModels models)
{
    public static TheoryData<GgmlType, string, int, int> Cases()
    {
        var data = new TheoryData<GgmlType, string, int, int>();
        foreach (var type in new[] { GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q5_0 })
            foreach (var isa in Enum.GetNames<KernelIsa>())
            {
                data.Add(type, isa, 24, 96);   // a sixteen-row tile and an eight-row group left over; three blocks, all tail
                data.Add(type, isa, 64, 800);  // 25 blocks: three groups of eight and a tail
                data.Add(type, isa, 16, 2080); // 65 blocks: several column chunks per pass of the tokens, then a tail
            }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ProductsAndRowsMatchTheOriginalLayoutBitForBit(GgmlType type, string isaName, int rows, int cols)
    {
        var isa = Enum.Parse<KernelIsa>(isaName);
        if (!KernelIsaSupport.IsSupported(isa)) return; // runs where the CPU has it (AVX-512 on Zen 4/5)
        var rng = new Random(97 + rows + (int)type);
        var original = KernelMatrixTests.RandomWeights(type, rows, cols, rng);
        var reorganised = (byte[])original.Clone();
        const int MaxTokens = 17;
        var x = KernelMatrixTests.RandomInputs(MaxTokens * cols, rng);
        using var single = new LoomThreadPool(1);
        using var two = new LoomThreadPool(2);
        fixed (byte* o = original)
        fixed (byte* w = reorganised)
        fixed (float* xp = x)
        {
            var plain = new WeightMatrix(type, o, rows, cols);
            var interleaved = WeightMatrix.CreateOptimized(type, w, rows, cols);
            Assert.True(interleaved.Interleaved);
            Assert.False(original.AsSpan().SequenceEqual(reorganised), "the bytes were not reorganised");

            foreach (int tokens in new[] { 1, 3, 6, 8, 17 })
                foreach (var pool in new[] { single, two })
                {
                    var expected = new float[tokens * rows];
                    var actual = new float[tokens * rows];
                    fixed (float* e = expected)
                    fixed (float* a = actual)
                    {
                        plain.Multiply(xp, e, tokens, pool, isa);
                        interleaved.Multiply(xp, a, tokens, pool, isa);
                    }
                    AssertSameBits(expected, actual, rows, $"{type}/{isa} {tokens} tokens, {pool.ThreadCount} threads", "interleaved", "original");
                }

            AssertRowsMatch(plain, interleaved);
        }
    }

    public static TheoryData<GgmlType, int, int, byte> KQuantCases()
    {
        var data = new TheoryData<GgmlType, int, int, byte>();
        foreach (var type in new[] { GgmlType.Q4_K, GgmlType.Q6_K })
        {
            data.Add(type, 24, 256, 0);    // one super-block; three groups of eight rows
            data.Add(type, 64, 2304, 0);   // nine super-blocks
            data.Add(type, 16, 512, 0xFF); // every level, scale and min at its extreme: the int16 sums must not overflow
            data.Add(type, 16, 512, 0x7F);
            data.Add(type, 32, 2048, 1);   // quantized from floats, as in a real model
        }
        return data;
    }

    /// <summary>
    /// Q4_K/Q6_K matrices reorganised in place have their own arithmetic (exact integer sums per super-block, then one
    /// fused multiply-add chain): every path, token count and thread count gives the same bits as the scalar form, the
    /// products stay within rounding of the original layout's, and rows read back unchanged.
    /// </summary>
    [Theory]
    [MemberData(nameof(KQuantCases))]
    public void KQuantProductsAreTheSameOnEveryPathAndCloseToTheOriginalLayout(GgmlType type, int rows, int cols, byte fill)
    {
        var rng = new Random(31 + rows + cols + fill);
        var original = KernelMatrixTests.RandomWeights(type, rows, cols, rng);
        if (fill == 1)
        {
            var values = KernelMatrixTests.RandomInputs(rows * cols, rng);
            long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
            for (int r = 0; r < rows; r++)
                Quantizer.Quantize(type, values.AsSpan(r * cols, cols), original.AsSpan((int)(r * rowBytes), (int)rowBytes));
        }
        else if (fill != 0)
        {
            // keep the fp16 scales (finite, small) and set everything else to the pattern
            var scales = KernelMatrixTests.RandomWeights(type, rows, cols, rng);
            Array.Fill(original, fill);
            int blockBytes = GgmlTypeInfo.BlockBytes(type);
            foreach (int offset in type == GgmlType.Q4_K ? new[] { 0, 2 } : new[] { 208 })
                for (int b = 0; b < original.Length / blockBytes; b++)
                    Array.Copy(scales, b * blockBytes + offset, original, b * blockBytes + offset, 2);
        }
        var reorganised = (byte[])original.Clone();
        const int MaxTokens = 17;
        var x = KernelMatrixTests.RandomInputs(MaxTokens * cols, rng);
        if (fill > 1) Array.Fill(x, fill == 0xFF ? 1f : -1f); // every activation level ±127
        using var single = new LoomThreadPool(1);
        using var two = new LoomThreadPool(2);
        fixed (byte* o = original)
        fixed (byte* w = reorganised)
        fixed (float* xp = x)
        {
            var plain = new WeightMatrix(type, o, rows, cols);
            var interleaved = WeightMatrix.CreateOptimized(type, w, rows, cols);
            if (KernelIsaSupport.Best == KernelIsa.Portable) return;
            Assert.True(interleaved.Interleaved);

            var scalar = new float[MaxTokens * rows];
            fixed (float* r = scalar) interleaved.Multiply(xp, r, MaxTokens, single, KernelIsa.Portable);
            var reference = new float[MaxTokens * rows];
            fixed (float* r = reference) plain.Multiply(xp, r, MaxTokens, single, KernelIsa.Portable);
            float largest = reference.Max(Math.Abs);
            for (int i = 0; i < scalar.Length; i++)
                Assert.True(Math.Abs(scalar[i] - reference[i]) <= 1e-5f * largest,
                    $"{type} token {i / rows} row {i % rows}: {scalar[i]:R} interleaved, {reference[i]:R} original layout");

            foreach (var isa in Enum.GetValues<KernelIsa>().Where(KernelIsaSupport.IsSupported))
                foreach (int tokens in new[] { 1, 3, 8, 17 })
                    foreach (var pool in new[] { single, two })
                    {
                        var actual = new float[tokens * rows];
                        fixed (float* a = actual) interleaved.Multiply(xp, a, tokens, pool, isa);
                        AssertSameBits(scalar.AsSpan(0, actual.Length), actual, rows, $"{type}/{isa} {tokens} tokens, {pool.ThreadCount} threads", "kernel", "scalar form");
                    }

            AssertRowsMatch(plain, interleaved);
        }
    }

    /// <summary>
    /// F16 matrices checked finite take the lighter kernels (inputs pre-scaled by 2^112, or 2^16 on Intel), one token,
    /// four at a time and groups of four over rows widened once: the same bits as the plain kernels, also for subnormal
    /// weights, tails shorter than a vector, an odd row left over, and inputs too large to scale.
    /// </summary>
    [Theory]
    [InlineData("Avx2", 803)]
    [InlineData("Avx512", 803)] // one column chunk, then a 16-column step and a scalar tail
    [InlineData("Avx2", 819)]    // one token: 32-column steps (with the L2 fetch), then a 16-column step and a scalar tail
    [InlineData("Avx2", 64)]
    [InlineData("Avx512", 64)] // rows in pairs over a single column chunk
    [InlineData("Avx512", 1024)]
    [InlineData("Avx512", 2100)] // column chunks (of 512 for four tokens at a time, of 1024 widened once), then a 16-column step and a scalar tail
    [InlineData("Avx2", 1032)]   // two column chunks (even and odd steps per row pair), then an 8-column step
    [InlineData("Avx2", 2100)]   // five column chunks, then a scalar tail
    [InlineData("Avx2", 4105)]   // one token four rows at a time, then an 8-column step and a scalar tail
    [InlineData("Avx512", 4117)] // one token four rows at a time, then a 16-column step and a scalar tail
    public void FiniteF16ProductsMatchThePlainKernelsBitForBit(string isaName, int cols)
    {
        var isa = Enum.Parse<KernelIsa>(isaName);
        if (!KernelIsaSupport.IsSupported(isa)) return;
        const int rows = 21;
        var rng = new Random(cols);
        var weights = KernelMatrixTests.RandomWeights(GgmlType.F16, rows, cols, rng);
        using var pool = new LoomThreadPool(2);
        fixed (byte* w = weights)
        {
            var plain = new WeightMatrix(GgmlType.F16, w, rows, cols);
            var optimized = WeightMatrix.CreateOptimized(GgmlType.F16, w, rows, cols);
            Assert.True(optimized.FiniteHalves);
            // 17: four groups of four over rows widened once, and one more token; 8: two groups, widened once on Intel's AVX-512 path
            foreach (int tokens in new[] { 1, 5, 8, 17 })
                foreach (float largest in new[] { 0f, 30000f, 70000f, float.NaN })
                {
                    var x = KernelMatrixTests.RandomInputs(tokens * cols, rng);
                    if (largest != 0) x[(tokens - 1) * cols + cols / 2] = largest;
                    var expected = new float[tokens * rows];
                    var actual = new float[tokens * rows];
                    fixed (float* xp = x)
                    fixed (float* e = expected)
                    fixed (float* a = actual)
                    {
                        plain.Multiply(xp, e, tokens, pool, isa);
                        optimized.Multiply(xp, a, tokens, pool, isa);
                    }
                    AssertSameBits(expected, actual, rows, $"{isa} cols {cols}, {tokens} tokens, input up to {largest}", "finite-F16 kernel", "plain");
                }
        }
    }

    [Fact]
    public void ShapesAndScalesThatCannotBeInterleavedAreLeftAlone()
    {
        var rng = new Random(5);
        AssertLeftAlone(GgmlType.Q4_0, KernelMatrixTests.RandomWeights(GgmlType.Q4_0, 12, 64, rng), 12, 64); // rows not a multiple of 8
        AssertLeftAlone(GgmlType.Q5_K, KernelMatrixTests.RandomWeights(GgmlType.Q5_K, 16, 256, rng), 16, 256); // a type without the layout
        var infiniteMin = KernelMatrixTests.RandomWeights(GgmlType.Q4_K, 8, 256, rng);
        BitConverter.TryWriteBytes(infiniteMin.AsSpan(3 * 144 + 2, 2), (ushort)0xFC00); // one super-block's dmin is -Inf
        AssertLeftAlone(GgmlType.Q4_K, infiniteMin, 8, 256);
        var infinite = KernelMatrixTests.RandomWeights(GgmlType.Q5_0, 16, 64, rng);
        BitConverter.TryWriteBytes(infinite.AsSpan(5 * 22, 2), (ushort)0x7C00); // one block's scale is +Inf
        AssertLeftAlone(GgmlType.Q5_0, infinite, 16, 64);
        var nan = KernelMatrixTests.RandomWeights(GgmlType.F16, 4, 64, rng);
        BitConverter.TryWriteBytes(nan.AsSpan(2 * 100, 2), (ushort)0x7E00); // one weight is NaN
        fixed (byte* w = nan)
            Assert.False(WeightMatrix.CreateOptimized(GgmlType.F16, w, 4, 64).FiniteHalves);
    }

    /// <summary>Every output (token-major, <paramref name="rows"/> per token) has exactly the expected bits.</summary>
    private static void AssertSameBits(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, int rows, string context, string actualName, string expectedName)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                $"{context}, token {i / rows} row {i % rows}: {actual[i]:R} {actualName}, {expectedName} {expected[i]:R}");
    }

    private static void AssertRowsMatch(WeightMatrix plain, WeightMatrix interleaved)
    {
        var expectedRow = new float[plain.Cols];
        var actualRow = new float[plain.Cols];
        for (int r = 0; r < plain.Rows; r++)
        {
            plain.DequantizeRow(r, expectedRow);
            interleaved.DequantizeRow(r, actualRow);
            Assert.Equal(expectedRow, actualRow);
        }
    }

    private static void AssertLeftAlone(GgmlType type, byte[] weights, int rows, int cols)
    {
        var before = (byte[])weights.Clone();
        fixed (byte* w = weights)
            Assert.False(WeightMatrix.CreateOptimized(type, w, rows, cols).Interleaved);
        Assert.Equal(before, weights);
    }

    /// <summary>The loader reorganises Q4_0 weights (quantized by llama.cpp) in its copy-on-write map; the file's bytes stay as they were.</summary>
    [Fact]
    public void LoadingAModelNeverChangesTheFile()
    {
        string path = models.Quantized(TestModelFactory.ByName("llama-spm"), "Q4_0");
        var before = File.ReadAllBytes(path);
        float[] first, second;
        using (var model = TransformerModel.Load(path))
        {
            Assert.Equal(KernelIsaSupport.Best != KernelIsa.Portable, model.Weights.Layers[0].Up.Weight.Interleaved);
            first = Logits(model);
        }
        Assert.Equal(before, File.ReadAllBytes(path));
        using (var model = TransformerModel.Load(path))
            second = Logits(model);
        Assert.Equal(first, second);
    }

    private static float[] Logits(TransformerModel model)
    {
        using var session = new Loom.Inference.InferenceSession(model, 16);
        return session.Evaluate([1, 5, 9]).ToArray();
    }
}
