using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Loom.Training;

/// <summary>
/// Causal grouped-query attention over a batch of sequences, forward and backward, as matrix products per head
/// (scores Q·Kᵀ, output P·V; backward dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q). The forward's tasks are
/// (sequence, query head); the backward's are (sequence, key/value head), each owning the query heads that share it,
/// so gradients of a shared key/value head are summed by one thread in a fixed order. Each product is one call that
/// skips the masked triangle register tile by register tile (<see cref="Triangle"/>): the probabilities and their
/// gradients are zero above the diagonal, and only a band of that zero is ever read (<see cref="ClearBand"/>).
/// </summary>
internal sealed class Attention(ModelShape shape)
{
    [ThreadStatic] private static float[]? _scratch;

    private readonly int _groupSize = shape.Heads / shape.KvHeads;
    // Where a token's keys and values start in its row of queries, keys and values.
    private int KeysAt => shape.Dim;
    private int ValuesAt => shape.Dim + shape.KvDim;
    private readonly float _scale = 1f / MathF.Sqrt(shape.HeadDim);

    /// <summary>
    /// qkv: [B·T, QkvDim], each row a token's queries (Heads·hd), keys and values (KvHeads·hd each), the queries and
    /// keys already rotated; writes the softmax probabilities (before dropout) to probs [B, Heads, T, T] — each row's
    /// visible part and the zero band after it (<see cref="ClearBand"/>), which is all that <see cref="Backward"/>
    /// reads — and the head outputs to output [B·T, Heads·hd].
    /// </summary>
    public void Forward(float[] qkv, float[] probs, float[] output, int batch, int seqLen, DropoutMask mask, int threads,
        TrainingPrecision precision = TrainingPrecision.Fp32)
    {
        // One task per (sequence, query head): the heads are independent here, and three times as many tasks as
        // (sequence, key/value head) pairs leave less of the last one to a single thread.
        WorkerPool.Get(threads).For(batch * shape.Heads, task => ForwardHead(qkv, probs, output, task / shape.Heads, task % shape.Heads, seqLen, mask, precision));
    }

    private void ForwardHead(float[] qkv, float[] probs, float[] output, int b, int head, int seqLen, DropoutMask mask, TrainingPrecision precision)
    {
        int hd = shape.HeadDim, dim = shape.Dim, row = shape.QkvDim, T = seqLen, kvHead = head / _groupSize;
        var keys = qkv.AsSpan(b * T * row + KeysAt + kvHead * hd);
        var values = qkv.AsSpan(b * T * row + ValuesAt + kvHead * hd);
        int probBase = (b * shape.Heads + head) * T * T;
        var p = probs.AsSpan(probBase, T * T);
        var query = qkv.AsSpan(b * T * row + head * hd);
        // Scores: each query against the keys up to its own position (the softmax reads no further).
        MatMul.Multiply(query, row, 1, keys, 1, row, p, T, T, T, hd, accumulate: false, threads: 1, precision, Triangle.LowerC);
        for (int t = 0; t < T; t++)
        {
            var scores = p.Slice(t * T, T);
            Softmax(scores[..(t + 1)], _scale);
            ClearBand(scores, t);
        }
        var weights = p;
        if (mask.Active)
        {
            var scratch = Scratch(T * T, T * T);
            weights = scratch.AsSpan(0, T * T);
            MaskRows(mask, p, weights, scratch.AsSpan(T * T, T * T), probBase, T);
        }
        var o = output.AsSpan(b * T * dim + head * hd);
        MatMul.Multiply(weights, T, 1, values, row, 1, o, dim, T, hd, T, accumulate: false, threads: 1, precision, Triangle.LowerA);
    }

    /// <summary>From dOutput, writes dQkv (laid out as qkv, overwriting it), for pre-rotation-backward queries and keys.</summary>
    public void Backward(float[] dOutput, float[] qkv, float[] probs, float[] dQkv, int batch, int seqLen, DropoutMask mask, int threads,
        TrainingPrecision precision = TrainingPrecision.Fp32)
    {
        WorkerPool.Get(threads).For(batch * shape.KvHeads, task =>
        {
            int b = task / shape.KvHeads, kvHead = task % shape.KvHeads;
            int hd = shape.HeadDim, dim = shape.Dim, row = shape.QkvDim, T = seqLen;
            var keys = qkv.AsSpan(b * T * row + KeysAt + kvHead * hd);
            var values = qkv.AsSpan(b * T * row + ValuesAt + kvHead * hd);
            var dKeys = dQkv.AsSpan(b * T * row + KeysAt + kvHead * hd);
            var dValues = dQkv.AsSpan(b * T * row + ValuesAt + kvHead * hd);
            var scratch = Scratch(T * T, mask.Active ? 2 * T * T : 0);
            var dScores = scratch.AsSpan(0, T * T);
            for (int head = kvHead * _groupSize; head < (kvHead + 1) * _groupSize; head++)
            {
                bool first = head == kvHead * _groupSize;
                int probBase = (b * shape.Heads + head) * T * T;
                var p = probs.AsSpan(probBase, T * T);
                var query = qkv.AsSpan(b * T * row + head * hd);
                var d = dOutput.AsSpan(b * T * dim + head * hd);
                var weights = p;
                var factors = mask.Active ? scratch.AsSpan(2 * T * T, T * T) : default;
                if (mask.Active)
                {
                    // The factors serve the probabilities here and their gradients below.
                    weights = scratch.AsSpan(T * T, T * T);
                    MaskRows(mask, p, weights, factors, probBase, T);
                }
                // Through out = Σ_j dropout(p_j)·v_j: dV (+)= dropout(P)ᵀ·dO and dP = (dO·Vᵀ) ⊙ mask.
                CausalTransposedProduct(weights, d, dim, dValues, row, T, accumulate: !first, precision);
                MatMul.Multiply(d, dim, 1, values, 1, row, dScores, T, T, T, hd, accumulate: false, threads: 1, precision, Triangle.LowerC);
                // Through the softmax: ds_j = p_j (dp_j − Σ p·dp) · scale, zero above the diagonal.
                for (int t = 0; t < T; t++)
                {
                    var scores = dScores.Slice(t * T, T);
                    var visible = scores[..(t + 1)];
                    if (mask.Active) TensorPrimitives.Multiply(visible, factors.Slice(t * T, t + 1), visible);
                    var pt = p.Slice(t * T, t + 1);
                    float mean = TensorPrimitives.Dot(pt, visible);
                    TensorPrimitives.Subtract(visible, mean, visible);
                    TensorPrimitives.Multiply(visible, pt, visible);
                    TensorPrimitives.Multiply(visible, _scale, visible);
                    ClearBand(scores, t);
                }
                var dQuery = dQkv.AsSpan(b * T * row + head * hd);
                MatMul.Multiply(dScores, T, 1, keys, row, 1, dQuery, row, T, hd, T, accumulate: false, threads: 1, precision, Triangle.LowerA);
                CausalTransposedProduct(dScores, query, row, dKeys, row, T, accumulate: !first, precision);
            }
        });
    }

    /// <summary>
    /// weights = p ⊙ the mask's factors (kept in factors) over each row's visible part 0..t; zero in the band beyond it,
    /// as the probabilities are, so the mask is not computed where it could not matter.
    /// </summary>
    private static void MaskRows(DropoutMask mask, ReadOnlySpan<float> p, Span<float> weights, Span<float> factors, int probBase, int T)
    {
        for (int t = 0; t < T; t++)
        {
            var rowFactors = factors.Slice(t * T, t + 1);
            mask.Fill(rowFactors, probBase + (long)t * T);
            TensorPrimitives.Multiply(p.Slice(t * T, t + 1), rowFactors, weights.Slice(t * T, t + 1));
            ClearBand(weights.Slice(t * T, T), t);
        }
    }

    /// <summary>
    /// c (+)= Lᵀ·x for a T × T matrix l that is zero above its diagonal (row t holds columns 0..t, then the zero band):
    /// row j of the result only sums rows t ≥ j.
    /// </summary>
    private void CausalTransposedProduct(Span<float> l, Span<float> x, int xRow, Span<float> c, int cRow, int T, bool accumulate, TrainingPrecision precision) =>
        MatMul.Multiply(l, 1, T, x, xRow, 1, c, cRow, T, shape.HeadDim, T, accumulate, threads: 1, precision, Triangle.UpperA);

    /// <summary>
    /// Zeros row t of a T × T matrix just past its diagonal, as far as a register tile of the triangular products reads
    /// (<see cref="Triangle.LowerA"/>, <see cref="Triangle.UpperA"/>); beyond the band the row is never read, so it is
    /// left as it is (clearing whole upper triangles wrote 6 MB per layer of the benchmark model for nothing).
    /// </summary>
    private static void ClearBand(Span<float> row, int t) => row[(t + 1)..Math.Min(row.Length, t + MatMul.MaxTileRows)].Clear();

    /// <summary>
    /// row ← softmax(scale·row) in one fused pass per step (max, exponentials and their sum, normalization): rows are
    /// short, so separate library calls per step would cost more than the arithmetic.
    /// </summary>
    internal static void Softmax(Span<float> row, float scale)
    {
        ref float start = ref MemoryMarshal.GetReference(row);
        int length = row.Length, i = 0;
        float max = float.NegativeInfinity;
        if (Vector256.IsHardwareAccelerated && length >= 8)
        {
            var vmax = Vector256.Create(float.NegativeInfinity);
            for (; i + 8 <= length; i += 8) vmax = Vector256.Max(vmax, Vector256.LoadUnsafe(ref start, (nuint)i));
            max = Vector256.Max(vmax, Vector256.Create(max)).ToScalar();
            for (int lane = 1; lane < 8; lane++) max = MathF.Max(max, vmax.GetElement(lane));
        }
        for (; i < length; i++) max = MathF.Max(max, row[i]);

        float sum = 0;
        i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var vsum = Vector256<float>.Zero;
            var vmax = Vector256.Create(max);
            var vscale = Vector256.Create(scale);
            for (; i + 8 <= length; i += 8)
            {
                var e = Vector256.Exp((Vector256.LoadUnsafe(ref start, (nuint)i) - vmax) * vscale);
                e.StoreUnsafe(ref start, (nuint)i);
                vsum += e;
            }
            sum = Vector256.Sum(vsum);
        }
        for (; i < length; i++)
        {
            float e = MathF.Exp((row[i] - max) * scale);
            row[i] = e;
            sum += e;
        }
        TensorPrimitives.Multiply(row, 1f / sum, row);
    }

    /// <summary>This thread's scratch of at least first + second floats (reused across calls).</summary>
    private static float[] Scratch(int first, int second)
    {
        int length = first + second;
        if (_scratch is null || _scratch.Length < length) _scratch = new float[length];
        return _scratch;
    }
}
