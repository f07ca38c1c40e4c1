using Loom.Training;

namespace Loom.Training.Tests;

/// <summary>The training products against a double-precision loop, on shapes that hit every tile edge, on every path.</summary>
public sealed class MatMulTests
{
    private static float[] Random(int count, ulong seed)
    {
        var random = new DeterministicRandom(seed);
        return Enumerable.Range(0, count).Select(_ => (float)random.NextGaussian()).ToArray();
    }

    [Theory]
    [InlineData(1, 1, 1, 1)]
    [InlineData(7, 13, 5, 2)]
    [InlineData(64, 48, 40, 2)]
    [InlineData(97, 35, 19, 3)]
    [InlineData(130, 172, 64, 2)]
    [InlineData(200, 300, 33, 2)]
    public void ForwardAndBothBackwardProductsMatchAPlainLoop(int tokens, int inputs, int outputs, int threads)
    {
        float[] x = Random(tokens * inputs, 1), w = Random(outputs * inputs, 2), dy = Random(tokens * outputs, 3);

        var y = new float[tokens * outputs];
        MatMul.Forward(x, w, y, tokens, inputs, outputs, threads);
        var dx = Random(tokens * inputs, 4);
        var dxBefore = (float[])dx.Clone();
        MatMul.BackwardInput(dy, w, dx, tokens, inputs, outputs, accumulate: true, threads);
        var dw = Random(outputs * inputs, 5);
        var dwBefore = (float[])dw.Clone();
        MatMul.BackwardWeight(dy, x, dw, tokens, inputs, outputs, threads);

        for (int n = 0; n < tokens; n++)
        for (int o = 0; o < outputs; o++)
        {
            double sum = 0;
            for (int i = 0; i < inputs; i++) sum += (double)x[n * inputs + i] * w[o * inputs + i];
            Assert.Equal(sum, y[n * outputs + o], 1e-4 * Math.Sqrt(inputs));
        }
        for (int n = 0; n < tokens; n++)
        for (int i = 0; i < inputs; i++)
        {
            double sum = dxBefore[n * inputs + i];
            for (int o = 0; o < outputs; o++) sum += (double)dy[n * outputs + o] * w[o * inputs + i];
            Assert.Equal(sum, dx[n * inputs + i], 1e-4 * Math.Sqrt(outputs));
        }
        for (int o = 0; o < outputs; o++)
        for (int i = 0; i < inputs; i++)
        {
            double sum = dwBefore[o * inputs + i];
            for (int n = 0; n < tokens; n++) sum += (double)dy[n * outputs + o] * x[n * inputs + i];
            Assert.Equal(sum, dw[o * inputs + i], 1e-4 * Math.Sqrt(tokens));
        }
    }

    /// <summary>Every path, whether or not this CPU has its instructions (a missing one runs in software vectors, the same bits).</summary>
    public static TheoryData<string> Paths => new(Enum.GetNames<TrainingIsa>());

    /// <summary>
    /// Every path computes each element as the same chain of fused multiply-adds, so all agree bit for bit with the
    /// portable one, with any thread count, for plain, transposed and strided operands, overwriting or accumulating.
    /// </summary>
    [Theory]
    [MemberData(nameof(Paths))]
    public void EveryPathAndThreadCountGivesTheSameBits(string path)
    {
        var isa = Enum.Parse<TrainingIsa>(path);
        // 555 deep crosses a depth block on every path (256 or 512) and leaves a last block of 43, which no packing
        // step divides; 61 × 45 leaves edge tiles in both directions for every tile size. 400 rows are five row
        // blocks, the last one short: two threads take them one block at a time, three in tile-aligned parts.
        const int cols = 45, depth = 555;
        foreach (int rows in new[] { 61, 400 })
        {
            float[] a = Random(rows * depth * 2, 6), b = Random(depth * cols * 2, 7), start = Random(rows * 50, 8);
            foreach (var (aRow, aCol) in new[] { (depth, 1), (1, rows), (2 * depth, 2) })
            foreach (var (bRow, bCol) in new[] { (cols, 1), (1, depth) })
            foreach (bool accumulate in new[] { false, true })
            {
                var expected = (float[])start.Clone();
                MatMul.Multiply(TrainingIsa.Portable, a, aRow, aCol, b, bRow, bCol, expected, 50, rows, cols, depth, accumulate, 1);
                foreach (int threads in new[] { 1, 2, 3 })
                {
                    var actual = (float[])start.Clone();
                    MatMul.Multiply(isa, a, aRow, aCol, b, bRow, bCol, actual, 50, rows, cols, depth, accumulate, threads);
                    Assert.Equal(expected, actual);
                }
            }
        }
    }

    /// <summary>
    /// Causal attention's triangular products on every path and thread count: the lower triangle of C alone, and sums
    /// over a triangular A whose zeros are only the band next to the diagonal that a register tile reads, with NaN
    /// beyond it — any use of what lies beyond would show as NaN. Each defined element equals the full product of A
    /// with NaN taken as zero, which is the portable path's plain loop.
    /// </summary>
    [Theory]
    [MemberData(nameof(Paths))]
    public void TriangularProductsComputeOnlyWhatCausalAttentionReads(string path)
    {
        var isa = Enum.Parse<TrainingIsa>(path);
        // 600 rows are seven row blocks, the last one short, and 600 deep crosses a depth block on every path.
        const int n = 600, cols = 45;
        float[] b = Random(n * cols, 9), start = Random(n * 50, 10);
        foreach (var triangle in new[] { Triangle.LowerA, Triangle.UpperA })
        foreach (bool transposed in new[] { false, true })
        {
            var values = Random(n * n, 11);
            float[] a = new float[n * n], zeroed = new float[n * n];
            for (int m = 0; m < n; m++)
            for (int k = 0; k < n; k++)
            {
                int past = triangle == Triangle.LowerA ? k - m : m - k;
                float value = past <= 0 ? values[m * n + k] : past < MatMul.MaxTileRows ? 0f : float.NaN;
                int at = transposed ? k * n + m : m * n + k;
                a[at] = value;
                zeroed[at] = float.IsNaN(value) ? 0f : value;
            }
            var (aRow, aCol) = transposed ? (1, n) : (n, 1);
            foreach (bool accumulate in new[] { false, true })
            {
                var full = (float[])start.Clone();
                MatMul.Multiply(TrainingIsa.Portable, zeroed, aRow, aCol, b, cols, 1, full, 50, n, cols, n, accumulate, 1);
                foreach (int threads in new[] { 1, 2 })
                {
                    var actual = (float[])start.Clone();
                    MatMul.Multiply(isa, a, aRow, aCol, b, cols, 1, actual, 50, n, cols, n, accumulate, threads, TrainingPrecision.Fp32, triangle);
                    Assert.Equal(full, actual);
                }
            }
        }

        // C's lower triangle: queries against keys, as the scores are computed (B read transposed).
        const int depth = 77;
        float[] q = Random(n * depth, 12), keys = Random(n * depth, 13);
        var expected = new float[n * n];
        MatMul.Multiply(TrainingIsa.Portable, q, depth, 1, keys, 1, depth, expected, n, n, n, depth, accumulate: false, 1);
        foreach (int threads in new[] { 1, 2 })
        {
            var scores = new float[n * n];
            Array.Fill(scores, float.NaN);
            MatMul.Multiply(isa, q, depth, 1, keys, 1, depth, scores, n, n, n, depth, accumulate: false, threads, TrainingPrecision.Fp32, Triangle.LowerC);
            for (int m = 0; m < n; m++)
                Assert.Equal(expected.AsSpan(m * n, m + 1).ToArray(), scores.AsSpan(m * n, m + 1).ToArray());
            // tiles wholly above the diagonal are left alone
            Assert.True(float.IsNaN(scores[n - 1]));
        }
    }

    [Fact]
    public void ShortBuffersAreRejected()
    {
        Assert.Throws<ArgumentException>(() => MatMul.Forward(new float[5], new float[6], new float[6], 2, 3, 2, 1));
    }
}
