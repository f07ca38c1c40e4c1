using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Loom.Training;

/// <summary>
/// The element-wise and per-token pieces of the decoder, each forward next to its backward. Backward functions
/// accumulate (+=) into input gradients that several paths feed (the residual stream, shared key/value heads).
/// </summary>
internal static class Layers
{
    /// <summary>y = x / rms(x) · w per row; saves 1/rms for the backward pass. Rows are split between threads.</summary>
    public static unsafe void RmsNormForward(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> y, Span<float> inverseRms, int rows, float epsilon,
        int threads)
    {
        int dim = weight.Length;
        Need(x.Length, (long)rows * dim, nameof(x));
        Need(y.Length, (long)rows * dim, nameof(y));
        Need(inverseRms.Length, rows, nameof(inverseRms));
        fixed (float* px = x, pw = weight, py = y, pr = inverseRms)
        {
            float* xs = px, ws = pw, ys = py, rs = pr;
            ForParts(rows, threads, (first, end) =>
            {
                var w = new ReadOnlySpan<float>(ws, dim);
                for (int r = first; r < end; r++)
                {
                    var xr = new ReadOnlySpan<float>(xs + (long)r * dim, dim);
                    var yr = new Span<float>(ys + (long)r * dim, dim);
                    float scale = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(xr) / dim + epsilon);
                    rs[r] = scale;
                    TensorPrimitives.Multiply(xr, scale, yr);
                    TensorPrimitives.Multiply(yr, w, yr);
                }
            });
        }
    }

    /// <summary>
    /// dx += s·(dy⊙w) − x·s³·⟨dy⊙w, x⟩/dim and dw += Σ_rows dy⊙x·s, with s = 1/rms(x). The threads split dx by rows while
    /// one of them sums dw over all rows in order: the bits do not depend on the thread count.
    /// </summary>
    public static unsafe void RmsNormBackward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> weight, ReadOnlySpan<float> inverseRms,
        Span<float> dx, Span<float> dWeight, int rows, int threads)
    {
        int dim = weight.Length;
        Need(dy.Length, (long)rows * dim, nameof(dy));
        Need(x.Length, (long)rows * dim, nameof(x));
        Need(dx.Length, (long)rows * dim, nameof(dx));
        Need(inverseRms.Length, rows, nameof(inverseRms));
        Need(dWeight.Length, dim, nameof(dWeight));
        fixed (float* pdy = dy, px = x, pw = weight, pr = inverseRms, pdx = dx, pdw = dWeight)
        {
            float* dys = pdy, xs = px, ws = pw, rs = pr, dxs = pdx, dws = pdw;
            var pool = WorkerPool.Get(threads);
            int parts = PartCount(pool, rows);
            // Item 0 is dw, items 1.. split dx by rows: they read the same dy and x and write different buffers, so they
            // run side by side. (dw split by columns instead had both threads read every row's lines at once, and that
            // pass ran two to five times slower on two threads than on one.)
            pool.For(parts + 1, item =>
            {
                if (item == 0) RmsNormGainGradient(dys, xs, rs, dws, rows, dim);
                else RmsNormInputGradient(dys, xs, ws, rs, dxs, PartStart(rows, item - 1, parts), PartStart(rows, item, parts), dim);
            });
        }
    }

    private static unsafe void RmsNormInputGradient(float* dys, float* xs, float* ws, float* rs, float* dxs, int first, int end, int dim)
    {
        var w = new ReadOnlySpan<float>(ws, dim);
        var weighted = Scratch(dim);
        for (int r = first; r < end; r++)
        {
            var dyr = new ReadOnlySpan<float>(dys + (long)r * dim, dim);
            var xr = new ReadOnlySpan<float>(xs + (long)r * dim, dim);
            var dxr = new Span<float>(dxs + (long)r * dim, dim);
            float s = rs[r];
            TensorPrimitives.Multiply(dyr, w, weighted);
            float projection = TensorPrimitives.Dot(weighted, xr) * s * s * s / dim;
            TensorPrimitives.MultiplyAdd(weighted, s, dxr, dxr);
            TensorPrimitives.MultiplyAdd(xr, -projection, dxr, dxr);
        }
    }

    /// <summary>
    /// dw[c] += (dy[r, c]·x[r, c])·s[r] for rows in order: the library's Multiply then MultiplyAdd (both unfused, element
    /// by element), written out, without two library calls per row.
    /// </summary>
    private static unsafe void RmsNormGainGradient(float* dys, float* xs, float* rs, float* dw, int rows, int dim)
    {
        int vectorEnd = Vector256.IsHardwareAccelerated ? dim / 8 * 8 : 0;
        for (int r = 0; r < rows; r++)
        {
            float* dyr = dys + (long)r * dim, xr = xs + (long)r * dim;
            float s = rs[r];
            var vs = Vector256.Create(s);
            int c = 0;
            for (; c < vectorEnd; c += 8)
                (Vector256.Load(dyr + c) * Vector256.Load(xr + c) * vs + Vector256.Load(dw + c)).Store(dw + c);
            for (; c < dim; c++) dw[c] = dyr[c] * xr[c] * s + dw[c];
        }
    }

    /// <summary>target = source ⊙ the mask's factors (a copy when the mask is off; source may be target), split between threads.</summary>
    public static void Dropout(DropoutMask mask, float[] source, float[] target, int count, int threads)
    {
        Need(source.Length, count, nameof(source));
        Need(target.Length, count, nameof(target));
        if (!mask.Active && source == target) return;
        ForChunks(count, threads, (start, length) =>
        {
            if (mask.Active) mask.Apply(source.AsSpan(start, length), target.AsSpan(start, length), start);
            else source.AsSpan(start, length).CopyTo(target.AsSpan(start, length));
        });
    }

    /// <summary>sum = x + y over count elements, split between threads (sum may be x or y).</summary>
    public static void Add(float[] x, float[] y, float[] sum, int count, int threads)
    {
        Need(x.Length, count, nameof(x));
        Need(y.Length, count, nameof(y));
        Need(sum.Length, count, nameof(sum));
        ForChunks(count, threads, (start, length) =>
            TensorPrimitives.Add(x.AsSpan(start, length), y.AsSpan(start, length), sum.AsSpan(start, length)));
    }

    /// <summary>values[0..count) = 0, split between threads.</summary>
    public static void Clear(float[] values, int count, int threads)
    {
        Need(values.Length, count, nameof(values));
        ForChunks(count, threads, (start, length) => values.AsSpan(start, length).Clear());
    }

    /// <summary>Row r of rows = row ids[r] of the table (an embedding lookup), split between threads.</summary>
    public static void Gather(float[] table, TensorSlot slot, int[] ids, float[] rows, int count, int threads)
    {
        int dim = slot.Cols;
        Need(rows.Length, (long)count * dim, nameof(rows));
        CheckIds(ids, count, slot.Rows);
        ForParts(count, threads, (first, end) =>
        {
            var source = slot.Of(table);
            for (int r = first; r < end; r++) source.Slice(ids[r] * dim, dim).CopyTo(rows.AsSpan(r * dim, dim));
        });
    }

    /// <summary>
    /// Row ids[r] of the table += row r of rows, for r in order (an embedding's gradient). The threads split the
    /// columns, so each element still adds its rows in order, whatever the thread count.
    /// </summary>
    public static void ScatterAdd(float[] rows, int[] ids, int count, float[] table, TensorSlot slot, int threads)
    {
        int dim = slot.Cols;
        Need(rows.Length, (long)count * dim, nameof(rows));
        CheckIds(ids, count, slot.Rows);
        ForColumns(dim, threads, (c0, width) =>
        {
            var target = slot.Of(table);
            for (int r = 0; r < count; r++)
            {
                var row = target.Slice(ids[r] * dim + c0, width);
                TensorPrimitives.Add(row, rows.AsSpan(r * dim + c0, width), row);
            }
        });
    }

    private static void CheckIds(int[] ids, int count, int tableRows)
    {
        for (int r = 0; r < count; r++)
            if ((uint)ids[r] >= (uint)tableRows) throw new ArgumentOutOfRangeException(nameof(ids), ids[r], $"row outside the table of {tableRows}");
    }

    /// <summary>body(start, length) for each <see cref="Chunk"/>-element piece of [0, count), one work item each.</summary>
    internal static void ForChunks(int count, int threads, Action<int, int> body) =>
        WorkerPool.Get(threads).For((count + Chunk - 1) / Chunk, chunk => body(chunk * Chunk, Math.Min(Chunk, count - chunk * Chunk)));

    /// <summary>
    /// body(firstColumn, width) over [0, columns) in column ranges of whole eight-float vectors, one range per part: each
    /// piece is done as the full row would be, and every column's rows stay in order within one thread.
    /// </summary>
    private static void ForColumns(int columns, int threads, Action<int, int> body) =>
        ForParts((columns + 7) / 8, threads, (first, end) => body(first * 8, Math.Min(columns, end * 8) - first * 8));

    /// <summary>body(first, end) over [0, count) in contiguous parts, a few per thread so that a thread held up takes fewer.</summary>
    private static void ForParts(int count, int threads, Action<int, int> body)
    {
        var pool = WorkerPool.Get(threads);
        int parts = PartCount(pool, count);
        if (parts <= 1)
        {
            body(0, count);
            return;
        }
        pool.For(parts, p => body(PartStart(count, p, parts), PartStart(count, p + 1, parts)));
    }

    /// <summary>How many contiguous parts <see cref="ForParts"/> cuts count items into for this pool.</summary>
    private static int PartCount(WorkerPool pool, int count) => pool.Threads == 1 ? 1 : Math.Min(count, 4 * pool.Threads);

    /// <summary>Where part p of parts (p = parts: the end) starts in [0, count).</summary>
    private static int PartStart(int count, int p, int parts) => (int)((long)count * p / parts);

    private static void Need(int length, long needed, string name)
    {
        if (length < needed) throw new ArgumentException($"{name} holds {length} floats, {needed} needed", name);
    }

    /// <summary>
    /// Cosines and sines of the rotary embedding for positions 0..count−1, computed as Loom's inference (and ggml)
    /// does: the angle advances by repeated float multiplication with base^(−2/headDim).
    /// </summary>
    public static void RopeTables(int count, int headDim, float ropeBase, Span<float> cos, Span<float> sin)
    {
        int pairs = headDim / 2;
        float thetaScale = MathF.Pow(ropeBase, -2f / headDim);
        for (int t = 0; t < count; t++)
        {
            float theta = t;
            for (int i = 0; i < pairs; i++, theta *= thetaScale)
            {
                cos[t * pairs + i] = MathF.Cos(theta);
                sin[t * pairs + i] = MathF.Sin(theta);
            }
        }
    }

    /// <summary>
    /// Rotates adjacent pairs (2i, 2i+1) of every head in place — llama GGUF's "normal" RoPE layout; row r's heads
    /// start at <paramref name="data"/>[r·rowStride]. With <paramref name="inverse"/> it rotates by the opposite angle,
    /// which is the backward pass (a rotation's transpose is its inverse). Positions are split between threads.
    /// </summary>
    public static unsafe void Rope(Span<float> data, int rowStride, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, int rows, int seqLen, int heads, int headDim,
        bool inverse, int threads)
    {
        int pairs = headDim / 2, length = data.Length, tableLength = Math.Min(cos.Length, sin.Length);
        int positions = Math.Min(seqLen, rows);
        Need(length, rows == 0 ? 0 : (long)(rows - 1) * rowStride + (long)heads * headDim, nameof(data));
        Need(tableLength, (long)positions * pairs, nameof(cos));
        float direction = inverse ? -1f : 1f;
        // Vectors of four pairs: x·(c, c) + (x1, x0)·(−s, s) is the scalar loop's x0·c − x1·s and x0·s + x1·c, the
        // same bits (a + (−b) is a − b, and a sum does not depend on its order of terms).
        bool vector = Vector256.IsHardwareAccelerated && headDim % 8 == 0;
        fixed (float* pd = data, pc = cos, ps = sin)
        {
            float* ds = pd, cs = pc, ss = ps;
            ForParts(positions, threads, (first, end) =>
            {
                var all = new Span<float>(ds, length);
                Span<float> pairCos = stackalloc float[vector ? headDim : 0], pairSin = stackalloc float[vector ? headDim : 0];
                var swap = Vector256.Create(1, 0, 3, 2, 5, 4, 7, 6);
                // position by position, so each position's pair tables serve its row in every sequence of the batch
                for (int t = first; t < end; t++)
                {
                    var c = new ReadOnlySpan<float>(cs + (long)t * pairs, pairs);
                    var s = new ReadOnlySpan<float>(ss + (long)t * pairs, pairs);
                    if (vector)
                    {
                        for (int i = 0; i < pairs; i++)
                        {
                            float sn = direction * s[i];
                            pairCos[2 * i] = pairCos[2 * i + 1] = c[i];
                            pairSin[2 * i] = -sn;
                            pairSin[2 * i + 1] = sn;
                        }
                        // Eight floats of every head of this position's rows per step, so each step's table vectors are
                        // loaded once (per head and vector, the span slices cost more than the arithmetic at 32 floats a head).
                        for (int j = 0; j < headDim; j += 8)
                        {
                            var cosines = Vector256.Create<float>(pairCos[j..]);
                            var sines = Vector256.Create<float>(pairSin[j..]);
                            for (int r = t; r < rows; r += seqLen)
                            {
                                float* row = ds + (long)r * rowStride + j;
                                for (int h = 0; h < heads; h++)
                                {
                                    var x = Vector256.Load(row + h * headDim);
                                    (x * cosines + Vector256.Shuffle(x, swap) * sines).Store(row + h * headDim);
                                }
                            }
                        }
                        continue;
                    }
                    for (int r = t; r < rows; r += seqLen)
                    for (int h = 0; h < heads; h++)
                    {
                        var v = all.Slice(r * rowStride + h * headDim, headDim);
                        for (int i = 0; i < pairs; i++)
                        {
                            float x0 = v[2 * i], x1 = v[2 * i + 1], sn = direction * s[i];
                            v[2 * i] = x0 * c[i] - x1 * sn;
                            v[2 * i + 1] = x0 * sn + x1 * c[i];
                        }
                    }
                }
            });
        }
    }

    // Elements per chunk of the element-wise work: a few L1-sized pieces, handed to threads in a fixed split.
    private const int Chunk = 4096;
    // Rows of the cross-entropy per partial loss sum; fixed, so the loss does not depend on the thread count.
    private const int LossRows = 32;

    [ThreadStatic] private static float[]? _scratch;

    private static Span<float> Scratch(int length)
    {
        if (_scratch is null || _scratch.Length < length) _scratch = new float[Math.Max(length, 2 * Chunk)];
        return _scratch.AsSpan(0, length);
    }

    /// <summary>h = silu(g)·u.</summary>
    public static void SwiGluForward(float[] gate, float[] up, float[] h, int count, int threads)
    {
        ForChunks(count, threads, (start, length) =>
        {
            if (Vector256.IsHardwareAccelerated)
            {
                SwiGluForwardFused(gate.AsSpan(start, length), up.AsSpan(start, length), h.AsSpan(start, length));
                return;
            }
            var g = gate.AsSpan(start, length);
            var output = h.AsSpan(start, length);
            TensorPrimitives.Sigmoid(g, output);
            TensorPrimitives.Multiply(output, g, output);
            TensorPrimitives.Multiply(output, up.AsSpan(start, length), output);
        });
    }

    // The fused loops below make one pass where the library calls made three (forward) or eight (backward), with the
    // same operations in the same order, so the same bits: on Zen 3, one thread, 2M elements, medians of 40 calls
    // alternating with the library calls: forward 5.4 → 4.0 ms, backward 8.7 → 5.5 ms. A last part shorter than a
    // vector goes through a zero-padded vector, since the library's vector exponential serves it there too (the
    // scalar MathF.Exp can differ in the last bit).

    private static unsafe void SwiGluForwardFused(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> h)
    {
        int i = 0, count = h.Length;
        fixed (float* g = gate, u = up, output = h)
            for (; i + 8 <= count; i += 8)
                SwiGlu(Vector256.Load(g + i), Vector256.Load(u + i)).Store(output + i);
        if (i == count) return;
        Span<float> lanes = stackalloc float[8];
        var gTail = Padded(gate[i..], lanes);
        SwiGlu(gTail, Padded(up[i..], lanes)).CopyTo(lanes);
        lanes[..(count - i)].CopyTo(h[i..]);
    }

    private static unsafe void SwiGluBackwardFused(ReadOnlySpan<float> dh, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dGate, Span<float> dUp)
    {
        int i = 0, count = dh.Length;
        fixed (float* d = dh, g = gate, u = up, dg = dGate, du = dUp)
            for (; i + 8 <= count; i += 8)
            {
                var (gateGradient, upGradient) = SwiGluGradients(Vector256.Load(d + i), Vector256.Load(g + i), Vector256.Load(u + i));
                gateGradient.Store(dg + i);
                upGradient.Store(du + i);
            }
        if (i == count) return;
        Span<float> lanes = stackalloc float[8];
        var (dgTail, duTail) = SwiGluGradients(Padded(dh[i..], lanes), Padded(gate[i..], lanes), Padded(up[i..], lanes));
        dgTail.CopyTo(lanes);
        lanes[..(count - i)].CopyTo(dGate[i..]);
        duTail.CopyTo(lanes);
        lanes[..(count - i)].CopyTo(dUp[i..]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> SwiGlu(Vector256<float> g, Vector256<float> u) =>
        Vector256<float>.One / (Vector256<float>.One + Vector256.Exp(-g)) * g * u;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector256<float> DGate, Vector256<float> DUp) SwiGluGradients(Vector256<float> d, Vector256<float> g, Vector256<float> u)
    {
        var one = Vector256<float>.One;
        var sigmoid = one / (one + Vector256.Exp(-g));
        var silu = g * sigmoid;
        return ((g - silu + one) * sigmoid * u * d, d * silu);
    }

    /// <summary>Up to eight values in a vector, zeros after them (scratch holds the copy).</summary>
    private static Vector256<float> Padded(ReadOnlySpan<float> values, Span<float> scratch)
    {
        scratch.Clear();
        values.CopyTo(scratch);
        return Vector256.Create<float>(scratch);
    }

    /// <summary>dg = dh·u·σ(g)(1 + g − silu(g)), du = dh·silu(g).</summary>
    public static void SwiGluBackward(float[] dh, float[] gate, float[] up, float[] dGate, float[] dUp, int count, int threads)
    {
        ForChunks(count, threads, (start, length) =>
        {
            if (Vector256.IsHardwareAccelerated)
            {
                SwiGluBackwardFused(dh.AsSpan(start, length), gate.AsSpan(start, length), up.AsSpan(start, length),
                    dGate.AsSpan(start, length), dUp.AsSpan(start, length));
                return;
            }
            var g = gate.AsSpan(start, length);
            var d = dh.AsSpan(start, length);
            var scratch = Scratch(2 * length);
            Span<float> sigmoid = scratch[..length], silu = scratch[length..];
            TensorPrimitives.Sigmoid(g, sigmoid);
            TensorPrimitives.Multiply(g, sigmoid, silu);
            TensorPrimitives.Multiply(d, silu, dUp.AsSpan(start, length));
            var dg = dGate.AsSpan(start, length);
            TensorPrimitives.Subtract(g, silu, dg);
            TensorPrimitives.Add(dg, 1f, dg);
            TensorPrimitives.Multiply(dg, sigmoid, dg);
            TensorPrimitives.Multiply(dg, up.AsSpan(start, length), dg);
            TensorPrimitives.Multiply(dg, d, dg);
        });
    }

    /// <summary>
    /// Mean cross-entropy over rows; turns <paramref name="logits"/> into its gradient dlogits = (softmax − onehot)·scale/rows
    /// in place when <paramref name="gradientScale"/> is not null. Rows are split across threads; the per-row losses
    /// are summed in fixed groups and order, so the result does not depend on the thread count.
    /// </summary>
    public static double CrossEntropy(float[] logits, ReadOnlySpan<int> targets, int vocab, float? gradientScale, int threads)
    {
        int rows = targets.Length;
        foreach (int target in targets)
            if ((uint)target >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(targets), target, $"target token outside the vocabulary of {vocab}");
        var targetArray = targets.ToArray();
        var partial = new double[(rows + LossRows - 1) / LossRows];
        WorkerPool.Get(threads).For(partial.Length, group =>
        {
            double total = 0;
            for (int r = group * LossRows; r < Math.Min(rows, (group + 1) * LossRows); r++)
            {
                var row = logits.AsSpan(r * vocab, vocab);
                int target = targetArray[r];
                float max = TensorPrimitives.Max(row), targetLogit = row[target];
                // exp(x − max) in place for the gradient, else into scratch so the logits stay readable.
                var exps = gradientScale is null ? Scratch(vocab) : row;
                TensorPrimitives.Subtract(row, max, exps);
                TensorPrimitives.Exp(exps, exps);
                double sum = TensorPrimitives.Sum(exps);
                total += Math.Log(sum) + max - targetLogit;
                if (gradientScale is float scale)
                {
                    float factor = scale / rows;
                    TensorPrimitives.Multiply(row, (float)(factor / sum), row);
                    row[target] -= factor;
                }
            }
            partial[group] = total;
        });
        double loss = 0;
        foreach (double part in partial) loss += part;
        return loss / rows;
    }
}
