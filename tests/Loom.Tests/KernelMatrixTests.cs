using System.Runtime.InteropServices;
using Loom.Core;
using Loom.Core.Kernels;
using Loom.Core.Quantization;
using Loom.Core.Threading;

namespace Loom.Tests;

/// <summary>
/// WeightMatrix.Multiply on every type and every instruction-set path this CPU runs, against dequantize-then-dot in double.
/// Weights are random blocks (every bit pattern, scales kept finite), so no quantizer is needed for the K-quants.
/// </summary>
public unsafe class KernelMatrixTests
{
    private const int Rows = 37; // not a multiple of the 16-row tile nor of any chunk size

    /// <summary>(type, instruction-set path by name, tokens).</summary>
    public static TheoryData<GgmlType, string, int> Cases()
    {
        var data = new TheoryData<GgmlType, string, int>();
        foreach (var type in AllTypes)
            foreach (var isa in Enum.GetNames<KernelIsa>())
                foreach (int tokens in new[] { 1, 5 })
                    data.Add(type, isa, tokens);
        return data;
    }

    internal static readonly GgmlType[] AllTypes =
    [
        GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q8_0,
        GgmlType.IQ4_NL, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_XS,
    ];

    /// <summary>Column counts that hit the tails: an odd number of 32-blocks, three super-blocks, a ragged float row.</summary>
    internal static int ColsFor(GgmlType type) => GgmlTypeInfo.BlockSize(type) switch { 1 => 803, 32 => 800, _ => 768 };

    /// <summary>Byte offsets of the fp16 scale fields in a block (made finite and modest so the sums stay meaningful).</summary>
    private static int[] HalfFields(GgmlType type) => type switch
    {
        GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q8_0 or GgmlType.IQ4_NL or GgmlType.IQ4_XS => [0],
        GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q4_K or GgmlType.Q5_K => [0, 2],
        GgmlType.Q2_K => [80, 82],
        GgmlType.Q3_K => [108],
        GgmlType.Q6_K => [208],
        _ => [],
    };

    internal static byte[] RandomWeights(GgmlType type, int rows, int cols, Random rng)
    {
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var bytes = new byte[rows * rowBytes];
        switch (type)
        {
            case GgmlType.F32:
                var f = MemoryMarshal.Cast<byte, float>(bytes.AsSpan());
                for (int i = 0; i < f.Length; i++) f[i] = (float)(rng.NextDouble() * 2 - 1);
                break;
            case GgmlType.F16:
                var h = MemoryMarshal.Cast<byte, Half>(bytes.AsSpan());
                for (int i = 0; i < h.Length; i++) h[i] = (Half)(rng.NextDouble() * 2 - 1);
                // a few subnormal and tiny halves exercise the widening's special cases
                h[3] = BitConverter.UInt16BitsToHalf(0x0001);
                h[5] = BitConverter.UInt16BitsToHalf(0x83ff);
                h[7] = (Half)0.0;
                break;
            case GgmlType.BF16:
                var b = MemoryMarshal.Cast<byte, ushort>(bytes.AsSpan());
                for (int i = 0; i < b.Length; i++) b[i] = Fp.FloatToBFloat16((float)(rng.NextDouble() * 2 - 1));
                break;
            default:
                rng.NextBytes(bytes);
                int blockBytes = GgmlTypeInfo.BlockBytes(type);
                for (int blk = 0; blk < bytes.Length / blockBytes; blk++)
                    foreach (int offset in HalfFields(type))
                        BitConverter.TryWriteBytes(bytes.AsSpan(blk * blockBytes + offset, 2), Fp.FloatToHalf((float)(rng.NextDouble() * 0.02 + 0.001)));
                break;
        }
        return bytes;
    }

    internal static float[] RandomInputs(int count, Random rng)
    {
        var x = new float[count];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1) * (i % 7 == 0 ? 4 : 1);
        return x;
    }

    /// <summary>The inputs as the kernel sees them: quantized like llama.cpp, then expanded back to floats (plus Q8_1's rounded sums).</summary>
    private static (float[] Values, float[] SumsCorrection) QuantizedInputs(GgmlType type, float[] x, int cols, int tokens, float[] weightsRowMins)
    {
        var values = new float[x.Length];
        var kind = DotKernels.ActivationFor(type);
        if (kind == ActivationKind.Float) return (x, []);
        var qs = new sbyte[cols];
        var d = new float[cols / 32];
        var s = new float[cols / 32];
        var bsums = new short[cols / 16];
        var corrections = new float[tokens * (cols / 32)];
        fixed (float* xp = x)
        fixed (sbyte* q = qs)
        fixed (float* dp = d)
        fixed (float* sp = s)
        fixed (short* bp = bsums)
            for (int t = 0; t < tokens; t++)
            {
                if (kind == ActivationKind.Q8K)
                {
                    ActivationQuantizer.QuantizeQ8K(xp + t * cols, cols, q, dp, bp);
                    for (int i = 0; i < cols; i++) values[t * cols + i] = qs[i] * d[i / 256];
                    for (int g = 0; g < cols / 16; g++)
                    {
                        int sum = 0;
                        for (int j = 0; j < 16; j++) sum += qs[g * 16 + j];
                        Assert.Equal(sum, bsums[g]);
                    }
                }
                else
                {
                    ActivationQuantizer.QuantizeQ8Blocks32(xp + t * cols, cols, q, dp, sp, halfSums: true);
                    for (int i = 0; i < cols; i++) values[t * cols + i] = qs[i] * d[i / 32];
                    for (int blk = 0; blk < cols / 32; blk++)
                    {
                        int sum = 0;
                        for (int j = 0; j < 32; j++) sum += qs[blk * 32 + j];
                        corrections[t * (cols / 32) + blk] = s[blk] - d[blk] * sum; // Q8_1 stores d·Σq rounded to fp16
                    }
                }
            }
        return (values, corrections);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MultiplyMatchesDequantizedDoubleDot(GgmlType type, string isaName, int tokens)
    {
        var isa = Enum.Parse<KernelIsa>(isaName);
        if (!KernelIsaSupport.IsSupported(isa)) return; // runs where the CPU has it (AVX-512 on CI's Zen 5)
        int cols = ColsFor(type);
        var rng = new Random(1234 + (int)type * 31 + tokens);
        var weights = RandomWeights(type, Rows, cols, rng);
        var x = RandomInputs(tokens * cols, rng);
        var y = new float[tokens * Rows];
        using var pool = new LoomThreadPool(2);
        fixed (byte* w = weights)
        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            var matrix = new WeightMatrix(type, w, Rows, cols);
            matrix.Multiply(xp, yp, tokens, pool, isa);

            bool hasMin = type is GgmlType.Q4_1 or GgmlType.Q5_1;
            int blockBytes = GgmlTypeInfo.BlockBytes(type);
            var (xq, corrections) = QuantizedInputs(type, x, cols, tokens, []);
            var row = new float[cols];
            for (int r = 0; r < Rows; r++)
            {
                matrix.DequantizeRow(r, row);
                for (int t = 0; t < tokens; t++)
                {
                    double exact = 0, exactAbs = 0, emulated = 0, emulatedAbs = 0;
                    for (int c = 0; c < cols; c++)
                    {
                        exact += (double)row[c] * x[t * cols + c];
                        exactAbs += Math.Abs((double)row[c] * x[t * cols + c]);
                        emulated += (double)row[c] * xq[t * cols + c];
                        emulatedAbs += Math.Abs((double)row[c] * xq[t * cols + c]);
                    }
                    if (hasMin)
                        for (int blk = 0; blk < cols / 32; blk++)
                            emulated += (double)Fp.HalfToFloat(BitConverter.ToUInt16(weights, (int)(r * matrix.RowBytes) + blk * blockBytes + 2)) * corrections[t * (cols / 32) + blk];
                    float got = y[t * Rows + r];
                    // Same arithmetic up to float rounding of the accumulation...
                    Assert.True(Math.Abs(got - emulated) <= 2e-5 * emulatedAbs + 1e-7,
                        $"{type}/{isa} row {r} token {t}: got {got}, llama.cpp-style {emulated} (scale {emulatedAbs})");
                    // ...and close to the unquantized-input product (quantizing the inputs costs well under 1%).
                    Assert.True(Math.Abs(got - exact) <= 1e-2 * exactAbs + 1e-6,
                        $"{type}/{isa} row {r} token {t}: got {got}, exact {exact} (scale {exactAbs})");
                }
            }
        }
    }

    [Fact]
    public void EveryPathGivesTheSameAnswerUpToRounding()
    {
        foreach (var type in AllTypes)
        {
            int cols = ColsFor(type);
            var rng = new Random(99 + (int)type);
            var weights = RandomWeights(type, Rows, cols, rng);
            var x = RandomInputs(3 * cols, rng);
            var reference = new float[3 * Rows];
            var other = new float[3 * Rows];
            using var pool = new LoomThreadPool(1);
            fixed (byte* w = weights)
            fixed (float* xp = x)
            fixed (float* yr = reference)
            fixed (float* yo = other)
            {
                var matrix = new WeightMatrix(type, w, Rows, cols);
                matrix.Multiply(xp, yr, 3, pool, KernelIsa.Portable);
                foreach (var isa in new[] { KernelIsa.Avx2, KernelIsa.Avx512 })
                {
                    if (!KernelIsaSupport.IsSupported(isa)) continue;
                    matrix.Multiply(xp, yo, 3, pool, isa);
                    float scale = reference.Max(MathF.Abs);
                    for (int i = 0; i < reference.Length; i++)
                        Assert.True(MathF.Abs(reference[i] - other[i]) <= 1e-4f * scale, $"{type} {isa} [{i}]: {other[i]} vs portable {reference[i]}");
                }
            }
        }
    }

    [Fact]
    public void F16RowsKeepSubnormalsSignedZerosInfinitiesAndNaNs()
    {
        const int cols = 80; // vector body plus a scalar tail on every path
        var halves = new Half[3 * cols];
        var rng = new Random(17);
        for (int i = 0; i < halves.Length; i++)
            halves[i] = (i % 3) switch
            {
                0 => BitConverter.UInt16BitsToHalf((ushort)rng.Next(1, 0x400)),           // subnormal
                1 => BitConverter.UInt16BitsToHalf((ushort)(0x8000 | rng.Next(1, 0x400))), // negative subnormal
                _ => (Half)(rng.NextDouble() * 2 - 1),
            };
        halves[5] = BitConverter.UInt16BitsToHalf(0x8000); // -0
        halves[cols + 41] = Half.PositiveInfinity;
        halves[2 * cols + 9] = Half.NaN;
        var x = new float[4 * cols];
        for (int i = 0; i < x.Length; i++) x[i] = 0.5f + (float)rng.NextDouble();
        var y = new float[4 * 3];
        using var pool = new LoomThreadPool(1);
        fixed (Half* w = halves)
        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            var matrix = new WeightMatrix(GgmlType.F16, (byte*)w, 3, cols);
            foreach (var isa in Enum.GetValues<KernelIsa>())
                foreach (int tokens in new[] { 1, 4 })
                {
                    if (!KernelIsaSupport.IsSupported(isa)) continue;
                    matrix.Multiply(xp, yp, tokens, pool, isa);
                    for (int t = 0; t < tokens; t++)
                    {
                        double exact = 0, scale = 0;
                        for (int c = 0; c < cols; c++)
                        {
                            exact += (double)(float)halves[c] * x[t * cols + c];
                            scale += Math.Abs((double)(float)halves[c] * x[t * cols + c]);
                        }
                        Assert.True(Math.Abs(y[t * 3] - exact) <= 1e-5 * scale, $"{isa}/{tokens}: {y[t * 3]} vs {exact}");
                        Assert.Equal(float.PositiveInfinity, y[t * 3 + 1]);
                        Assert.True(float.IsNaN(y[t * 3 + 2]), $"{isa}/{tokens}: NaN row gave {y[t * 3 + 2]}");
                    }
                }
        }
    }

    [Fact]
    public void BlockScalesThatAreInfNaNOrSubnormalGiveWhatThePortablePathGives()
    {
        const int rows = 4, cols = 512;
        foreach (var type in new[] { GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q8_0, GgmlType.IQ4_NL })
        {
            var rng = new Random(40 + (int)type);
            var weights = RandomWeights(type, rows, cols, rng);
            long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
            int blockBytes = GgmlTypeInfo.BlockBytes(type);
            BitConverter.TryWriteBytes(weights.AsSpan((int)(1 * rowBytes + 3 * blockBytes)), (ushort)0x7c00);  // +Inf
            BitConverter.TryWriteBytes(weights.AsSpan((int)(2 * rowBytes + 9 * blockBytes)), (ushort)0x7e01);  // NaN
            BitConverter.TryWriteBytes(weights.AsSpan((int)(3 * rowBytes + 5 * blockBytes)), (ushort)0x8123);  // negative subnormal
            var x = RandomInputs(cols, rng);
            var reference = new float[rows];
            var other = new float[rows];
            using var pool = new LoomThreadPool(1);
            fixed (byte* w = weights)
            fixed (float* xp = x)
            fixed (float* yr = reference)
            fixed (float* yo = other)
            {
                var matrix = new WeightMatrix(type, w, rows, cols);
                matrix.Multiply(xp, yr, 1, pool, KernelIsa.Portable);
                Assert.True(float.IsInfinity(reference[1]) || float.IsNaN(reference[1]), $"{type}: Inf scale gave {reference[1]}");
                Assert.True(float.IsNaN(reference[2]), $"{type}: NaN scale gave {reference[2]}");
                foreach (var isa in new[] { KernelIsa.Avx2, KernelIsa.Avx512 })
                {
                    if (!KernelIsaSupport.IsSupported(isa)) continue;
                    matrix.Multiply(xp, yo, 1, pool, isa);
                    for (int r = 0; r < rows; r++)
                        if (float.IsFinite(reference[r]))
                            Assert.True(MathF.Abs(reference[r] - other[r]) <= 1e-4f * MathF.Max(1, MathF.Abs(reference[r])), $"{type} {isa} row {r}: {other[r]} vs {reference[r]}");
                        else // Inf may meet −Inf in Q4_0/Q5_0's min term, so Inf and NaN both count; finite would be wrong
                            Assert.False(float.IsFinite(other[r]), $"{type} {isa} row {r}: {other[r]} vs {reference[r]}");
                }
            }
        }
    }

    [Fact]
    public void TheDefaultPathRunsOnThisCpu()
    {
        Assert.True(KernelIsaSupport.IsSupported(KernelIsaSupport.Best));
        // LOOM_KERNEL_ISA may ask for a narrower path on purpose (the test suite is run that way too)
        if (System.Runtime.Intrinsics.X86.Avx2.IsSupported && string.IsNullOrEmpty(Environment.GetEnvironmentVariable("LOOM_KERNEL_ISA")))
            Assert.NotEqual(KernelIsa.Portable, KernelIsaSupport.Best);
    }

    [Fact]
    public void DequantizeRowMatchesDequantizerForEveryType()
    {
        foreach (var type in AllTypes)
        {
            int cols = ColsFor(type);
            var weights = RandomWeights(type, 4, cols, new Random(5));
            fixed (byte* w = weights)
            {
                var matrix = new WeightMatrix(type, w, 4, cols);
                var row = new float[cols];
                var expected = new float[cols];
                matrix.DequantizeRow(2, row);
                Dequantizer.Dequantize(type, weights.AsSpan((int)(2 * matrix.RowBytes), (int)matrix.RowBytes), expected);
                Assert.Equal(expected, row);
                Assert.Throws<ArgumentOutOfRangeException>(() => matrix.DequantizeRow(4, row));
                Assert.Throws<ArgumentException>(() => matrix.DequantizeRow(0, new float[cols - 1]));
            }
        }
    }

    [Fact]
    public void UnsupportedTypesAndBadShapesAreRejected()
    {
        var e = Assert.Throws<NotSupportedException>(() => new WeightMatrix(GgmlType.IQ2_XXS, (byte*)1, 1, 256));
        Assert.Contains("IQ2_XXS", e.Message);
        Assert.Throws<ArgumentException>(() => new WeightMatrix(GgmlType.Q4_0, (byte*)1, 1, 48));
        Assert.Throws<ArgumentOutOfRangeException>(() => new WeightMatrix(GgmlType.F32, (byte*)1, -1, 4));
    }
}

/// <summary>The AVX2 activation quantizers produce exactly the portable ones' bytes.</summary>
public unsafe class KernelActivationQuantizerTests
{
    [Fact]
    public void Avx2AndPortableActivationQuantizationAgree()
    {
        if (!System.Runtime.Intrinsics.X86.Avx2.IsSupported) return;
        var rng = new Random(21);
        const int n = 2048;
        var x = KernelMatrixTests.RandomInputs(n, rng);
        for (int i = 0; i < 32; i++) x[i] = 0;            // an all-zero block
        for (int i = 256; i < 512; i++) x[i] = 0;         // an all-zero super-block
        x[600] = 3.5f; x[601] = -3.5f;                    // equal magnitudes of opposite sign: the first one decides
        x[700] = 127.5f / 127 * 0.5f;                     // values near rounding ties
        var qa = new sbyte[n]; var qb = new sbyte[n];
        var da = new float[n / 32]; var db = new float[n / 32];
        var sa = new float[n / 32]; var sb = new float[n / 32];
        var ba = new short[n / 16]; var bb = new short[n / 16];
        fixed (float* xp = x)
        fixed (sbyte* qap = qa) fixed (sbyte* qbp = qb)
        fixed (float* dap = da) fixed (float* dbp = db)
        fixed (float* sap = sa) fixed (float* sbp = sb)
        fixed (short* bap = ba) fixed (short* bbp = bb)
        {
            foreach (bool halfSums in new[] { true, false })
            {
                ActivationQuantizer.QuantizeQ8Blocks32Portable(xp, n, qap, dap, sap, halfSums);
                ActivationQuantizer.QuantizeQ8Blocks32Avx2(xp, n, qbp, dbp, sbp, halfSums);
                Assert.Equal(qa, qb);
                Assert.Equal(da, db);
                Assert.Equal(sa, sb);
                for (int blk = 0; blk < n / 32; blk++)
                {
                    int sum = 0;
                    for (int j = 0; j < 32; j++) sum += qa[blk * 32 + j];
                    if (!halfSums) Assert.Equal(sum * da[blk], sa[blk]); // exact, for the −8d/−16d mins of Q4_0/Q5_0
                }
            }
            ActivationQuantizer.QuantizeQ8KPortable(xp, n, qap, dap, bap);
            ActivationQuantizer.QuantizeQ8KAvx2(xp, n, qbp, dbp, bbp);
            Assert.Equal(qa, qb);
            Assert.Equal(da.AsSpan(0, n / 256).ToArray(), db.AsSpan(0, n / 256).ToArray());
            Assert.Equal(ba, bb);
        }
    }

    [Fact]
    public void MultiplyDoesNotAllocateInSteadyState()
    {
        const int rows = 64, cols = 512;
        var rng = new Random(8);
        using var pool = new Loom.Core.Threading.LoomThreadPool(2);
        foreach (var type in new[] { GgmlType.Q4_K, GgmlType.Q8_0, GgmlType.F16 })
        {
            var weights = KernelMatrixTests.RandomWeights(type, rows, cols, rng);
            var x = KernelMatrixTests.RandomInputs(3 * cols, rng);
            var y = new float[3 * rows];
            fixed (byte* w = weights)
            fixed (float* xp = x)
            fixed (float* yp = y)
            {
                var matrix = new WeightMatrix(type, w, rows, cols);
                matrix.Multiply(xp, yp, 3, pool);
                nint input = (nint)xp, output = (nint)yp; // fixed locals cannot be captured; the pins hold for the call
                SteadyStateAllocation.AssertNone($"20 {type} products", () =>
                {
                    for (int i = 0; i < 20; i++) matrix.Multiply((float*)input, (float*)output, 3, pool);
                });
            }
        }
    }
}
