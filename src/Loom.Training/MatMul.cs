using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Loom.Training;

/// <summary>
/// The matrix products of training in two register-tiled kernels: C (+)= A·Bᵀ (the forward pass; each output is a dot
/// product: 8 lanes of fused multiply-adds along k, then a fixed horizontal sum) and C (+)= A·B with A optionally read
/// transposed (both backward products; each output is one fused multiply-add chain along k). Every output element is
/// computed in a fixed order by one thread, so results do not depend on how rows are split across threads: training
/// is bit-reproducible for a given seed.
/// </summary>
public static unsafe class MatMul
{
    // Tile of 3 A rows × 4 B rows: 12 accumulators + 3 A vectors + 1 B vector fill the 16 AVX2 registers.
    private const int TileRows = 3, TileCols = 4;
    // Plain products: 4 rows × 16 columns (two vectors) of C per tile, 8 accumulators.
    private const int PlainRows = 4, PlainCols = 16;
    // Floats of B kept hot per block: half of a 512 KiB L2.
    private const int L2Floats = 64 * 1024;

    /// <summary>Forward of a linear layer: y[n, o] = Σ_i x[n, i]·w[o, i].</summary>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> y, int tokens, int inputs, int outputs, int threads) =>
        MultiplyTransposed(x, w, y, tokens, outputs, inputs, accumulate: false, threads);

    /// <summary>Input gradient of a linear layer: dx[n, i] (+)= Σ_o dy[n, o]·w[o, i].</summary>
    public static void BackwardInput(ReadOnlySpan<float> dy, ReadOnlySpan<float> w, Span<float> dx, int tokens, int inputs, int outputs, bool accumulate, int threads) =>
        MultiplyPlain(dy, rowStride: outputs, depthStride: 1, w, dx, tokens, inputs, outputs, accumulate, threads);

    /// <summary>Weight gradient of a linear layer: dw[o, i] += Σ_n dy[n, o]·x[n, i].</summary>
    public static void BackwardWeight(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, Span<float> dw, int tokens, int inputs, int outputs, int threads) =>
        MultiplyPlain(dy, rowStride: 1, depthStride: outputs, x, dw, outputs, inputs, tokens, accumulate: true, threads);

    /// <summary>
    /// c[m, n] (+)= Σ_k A(m, k)·b[k, n] with A(m, k) = a[m·rowStride + k·depthStride] (so A may be read transposed) and b
    /// row-major depth×cols. Each output is one chain of fused multiply-adds over k in order, identical in a vector
    /// lane and in the scalar edge path.
    /// </summary>
    public static void MultiplyPlain(ReadOnlySpan<float> a, int rowStride, int depthStride, ReadOnlySpan<float> b, Span<float> c,
        int rows, int cols, int depth, bool accumulate, int threads)
    {
        Check(a.Length, (long)(rows - 1) * rowStride + (long)(depth - 1) * depthStride + 1, nameof(a));
        Check(b.Length, (long)depth * cols, nameof(b));
        Check(c.Length, (long)rows * cols, nameof(c));
        fixed (float* pa = a, pb = b, pc = c)
        {
            var job = new PlainJob(pa, rowStride, depthStride, pb, pc, rows, cols, depth, accumulate);
            int rowTiles = (rows + PlainRows - 1) / PlainRows;
            long work = (long)rows * cols * depth;
            int parts = threads <= 1 || work < 1 << 15 ? 1 : Math.Min(rowTiles, threads * 4);
            if (parts == 1) job.Run(0, rowTiles);
            else WorkerPool.Get(threads).For(parts, p => job.Run((int)((long)rowTiles * p / parts), (int)((long)rowTiles * (p + 1) / parts)));
        }
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

    private readonly struct PlainJob(float* a, int rowStride, int depthStride, float* b, float* c, int rows, int cols, int depth, bool accumulate)
    {
        public void Run(int firstTile, int endTile)
        {
            // Columns outer: the depth×16 panel of b stays in cache while every row tile of this range uses it.
            for (int n = 0; n < cols; n += PlainCols)
            {
                int width = Math.Min(PlainCols, cols - n);
                for (int tile = firstTile; tile < endTile; tile++)
                {
                    int m = tile * PlainRows;
                    if (width == PlainCols && m + PlainRows <= rows && Vector256.IsHardwareAccelerated) Tile(m, n);
                    else
                        for (int i = m; i < Math.Min(rows, m + PlainRows); i++)
                        for (int j = n; j < n + width; j++) Single(i, j);
                }
            }
        }

        private void Tile(int m, int n)
        {
            Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default;
            Vector256<float> c20 = default, c21 = default, c30 = default, c31 = default;
            float* a0 = a + (long)m * rowStride, a1 = a0 + rowStride, a2 = a1 + rowStride, a3 = a2 + rowStride;
            float* bk = b + n;
            for (int k = 0; k < depth; k++, bk += cols)
            {
                var y0 = Vector256.Load(bk);
                var y1 = Vector256.Load(bk + 8);
                long offset = (long)k * depthStride;
                var x = Vector256.Create(a0[offset]);
                c00 = Vector256.FusedMultiplyAdd(x, y0, c00); c01 = Vector256.FusedMultiplyAdd(x, y1, c01);
                x = Vector256.Create(a1[offset]);
                c10 = Vector256.FusedMultiplyAdd(x, y0, c10); c11 = Vector256.FusedMultiplyAdd(x, y1, c11);
                x = Vector256.Create(a2[offset]);
                c20 = Vector256.FusedMultiplyAdd(x, y0, c20); c21 = Vector256.FusedMultiplyAdd(x, y1, c21);
                x = Vector256.Create(a3[offset]);
                c30 = Vector256.FusedMultiplyAdd(x, y0, c30); c31 = Vector256.FusedMultiplyAdd(x, y1, c31);
            }
            Put(m, n, c00, c01); Put(m + 1, n, c10, c11); Put(m + 2, n, c20, c21); Put(m + 3, n, c30, c31);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private void Put(int row, int n, Vector256<float> left, Vector256<float> right)
        {
            float* target = c + (long)row * cols + n;
            if (accumulate)
            {
                left += Vector256.Load(target);
                right += Vector256.Load(target + 8);
            }
            left.Store(target);
            right.Store(target + 8);
        }

        private void Single(int row, int n)
        {
            float sum = 0;
            float* ar = a + (long)row * rowStride;
            for (int k = 0; k < depth; k++) sum = MathF.FusedMultiplyAdd(ar[(long)k * depthStride], b[(long)k * cols + n], sum);
            float* target = c + (long)row * cols + n;
            *target = accumulate ? *target + sum : sum;
        }
    }
}
