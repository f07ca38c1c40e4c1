using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Loom.Training;

/// <summary>
/// The matrix products of training, all reduced to one register-tiled kernel C (+)= A·Bᵀ over row-major operands
/// (the layout in which both operands are read contiguously). Each output element is a dot product computed in a
/// fixed order (8 lanes of fused multiply-adds along k, then a fixed horizontal sum), so results do not depend on how
/// rows are split across threads: training is bit-reproducible for a given seed.
/// </summary>
public static unsafe class MatMul
{
    // Tile of 3 A rows × 4 B rows: 12 accumulators + 3 A vectors + 1 B vector fill the 16 AVX2 registers.
    private const int TileRows = 3, TileCols = 4;
    // Floats of B kept hot per block: half of a 512 KiB L2.
    private const int L2Floats = 64 * 1024;

    /// <summary>Forward of a linear layer: y[n, o] = Σ_i x[n, i]·w[o, i].</summary>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> y, int tokens, int inputs, int outputs, int threads) =>
        MultiplyTransposed(x, w, y, tokens, outputs, inputs, accumulate: false, threads);

    /// <summary>Input gradient of a linear layer: dx[n, i] (+)= Σ_o dy[n, o]·w[o, i]. <paramref name="wTransposed"/> is scratch of w's size.</summary>
    public static void BackwardInput(ReadOnlySpan<float> dy, ReadOnlySpan<float> w, Span<float> dx, Span<float> wTransposed,
        int tokens, int inputs, int outputs, bool accumulate, int threads)
    {
        Transpose(w, wTransposed, outputs, inputs);
        MultiplyTransposed(dy, wTransposed, dx, tokens, inputs, outputs, accumulate, threads);
    }

    /// <summary>
    /// Weight gradient of a linear layer: dw[o, i] += Σ_n dy[n, o]·x[n, i]. <paramref name="dyTransposed"/> and
    /// <paramref name="xTransposed"/> are scratch of dy's and x's sizes.
    /// </summary>
    public static void BackwardWeight(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, Span<float> dw, Span<float> dyTransposed, Span<float> xTransposed,
        int tokens, int inputs, int outputs, int threads)
    {
        Transpose(dy, dyTransposed, tokens, outputs);
        Transpose(x, xTransposed, tokens, inputs);
        MultiplyTransposed(dyTransposed, xTransposed, dw, outputs, inputs, tokens, accumulate: true, threads);
    }

    /// <summary>c[m, n] (+)= Σ_k a[m, k]·b[n, k] for a: rows×depth, b: cols×depth, c: rows×cols.</summary>
    public static void MultiplyTransposed(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int rows, int cols, int depth, bool accumulate, int threads)
    {
        Check(a.Length, (long)rows * depth, nameof(a));
        Check(b.Length, (long)cols * depth, nameof(b));
        Check(c.Length, (long)rows * cols, nameof(c));
        fixed (float* pa = a, pb = b, pc = c)
        {
            var job = new Job(pa, pb, pc, rows, cols, depth, accumulate);
            int rowTiles = (rows + TileRows - 1) / TileRows;
            long work = (long)rows * cols * depth;
            // Small products stay on the calling thread: handing them out costs more than they do.
            int parts = threads <= 1 || work < 1 << 15 ? 1 : Math.Min(rowTiles, threads * 4);
            if (parts == 1) job.Run(0, rowTiles);
            else
                WorkerPool.Get(threads).For(parts, p => job.Run((int)((long)rowTiles * p / parts), (int)((long)rowTiles * (p + 1) / parts)));
        }
    }

    /// <summary>dst[j, i] = src[i, j] for src: rows×cols.</summary>
    public static void Transpose(ReadOnlySpan<float> src, Span<float> dst, int rows, int cols)
    {
        Check(src.Length, (long)rows * cols, nameof(src));
        Check(dst.Length, (long)rows * cols, nameof(dst));
        const int block = 16;
        for (int i0 = 0; i0 < rows; i0 += block)
        for (int j0 = 0; j0 < cols; j0 += block)
        {
            int i1 = Math.Min(rows, i0 + block), j1 = Math.Min(cols, j0 + block);
            for (int i = i0; i < i1; i++)
            for (int j = j0; j < j1; j++)
                dst[j * rows + i] = src[i * cols + j];
        }
    }

    private static void Check(int length, long needed, string name)
    {
        if (length < needed) throw new ArgumentException($"{name} holds {length} floats, {needed} needed", name);
    }

    private readonly struct Job(float* a, float* b, float* c, int rows, int cols, int depth, bool accumulate)
    {
        public void Run(int firstTile, int endTile)
        {
            // B is walked in blocks of rows small enough to stay in L2 while every A tile of this range passes over them.
            int block = Math.Max(TileCols, (int)Math.Min(cols, (long)L2Floats / Math.Max(1, depth)) / TileCols * TileCols);
            for (int n0 = 0; n0 < cols; n0 += block)
            {
                int n1 = Math.Min(cols, n0 + block);
                for (int tile = firstTile; tile < endTile; tile++)
                {
                    int m = tile * TileRows;
                    int mCount = Math.Min(TileRows, rows - m);
                    int n = n0;
                    if (mCount == TileRows && Vector256.IsHardwareAccelerated)
                        for (; n + TileCols <= n1; n += TileCols) Tile(m, n);
                    for (; n < n1; n++)
                        for (int i = m; i < m + mCount; i++) Store(i, n, Dot(a + (long)i * depth, b + (long)n * depth));
                }
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private void Store(int i, int n, float value)
        {
            float* target = c + (long)i * cols + n;
            *target = accumulate ? *target + value : value;
        }

        private void Tile(int m, int n)
        {
            float* a0 = a + (long)m * depth, a1 = a0 + depth, a2 = a1 + depth;
            float* b0 = b + (long)n * depth, b1 = b0 + depth, b2 = b1 + depth, b3 = b2 + depth;
            Vector256<float> c00 = default, c01 = default, c02 = default, c03 = default;
            Vector256<float> c10 = default, c11 = default, c12 = default, c13 = default;
            Vector256<float> c20 = default, c21 = default, c22 = default, c23 = default;
            int k = 0;
            for (; k + 8 <= depth; k += 8)
            {
                var x0 = Vector256.Load(a0 + k);
                var x1 = Vector256.Load(a1 + k);
                var x2 = Vector256.Load(a2 + k);
                var y = Vector256.Load(b0 + k);
                c00 = Vector256.FusedMultiplyAdd(x0, y, c00); c10 = Vector256.FusedMultiplyAdd(x1, y, c10); c20 = Vector256.FusedMultiplyAdd(x2, y, c20);
                y = Vector256.Load(b1 + k);
                c01 = Vector256.FusedMultiplyAdd(x0, y, c01); c11 = Vector256.FusedMultiplyAdd(x1, y, c11); c21 = Vector256.FusedMultiplyAdd(x2, y, c21);
                y = Vector256.Load(b2 + k);
                c02 = Vector256.FusedMultiplyAdd(x0, y, c02); c12 = Vector256.FusedMultiplyAdd(x1, y, c12); c22 = Vector256.FusedMultiplyAdd(x2, y, c22);
                y = Vector256.Load(b3 + k);
                c03 = Vector256.FusedMultiplyAdd(x0, y, c03); c13 = Vector256.FusedMultiplyAdd(x1, y, c13); c23 = Vector256.FusedMultiplyAdd(x2, y, c23);
            }
            Store(m, n, Finish(c00, a0, b0, k)); Store(m, n + 1, Finish(c01, a0, b1, k)); Store(m, n + 2, Finish(c02, a0, b2, k)); Store(m, n + 3, Finish(c03, a0, b3, k));
            Store(m + 1, n, Finish(c10, a1, b0, k)); Store(m + 1, n + 1, Finish(c11, a1, b1, k)); Store(m + 1, n + 2, Finish(c12, a1, b2, k)); Store(m + 1, n + 3, Finish(c13, a1, b3, k));
            Store(m + 2, n, Finish(c20, a2, b0, k)); Store(m + 2, n + 1, Finish(c21, a2, b1, k)); Store(m + 2, n + 2, Finish(c22, a2, b2, k)); Store(m + 2, n + 3, Finish(c23, a2, b3, k));
        }

        /// <summary>One dot product with the same lane structure and summation order as a tile element.</summary>
        private float Dot(float* x, float* y)
        {
            if (!Vector256.IsHardwareAccelerated) return ScalarDot(x, y, depth);
            Vector256<float> sum = default;
            int k = 0;
            for (; k + 8 <= depth; k += 8) sum = Vector256.FusedMultiplyAdd(Vector256.Load(x + k), Vector256.Load(y + k), sum);
            return Finish(sum, x, y, k);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private float Finish(Vector256<float> lanes, float* x, float* y, int k)
        {
            float sum = Vector256.Sum(lanes);
            for (; k < depth; k++) sum = MathF.FusedMultiplyAdd(x[k], y[k], sum);
            return sum;
        }

        private static float ScalarDot(float* x, float* y, int depth)
        {
            float sum = 0;
            for (int k = 0; k < depth; k++) sum = MathF.FusedMultiplyAdd(x[k], y[k], sum);
            return sum;
        }
    }
}
