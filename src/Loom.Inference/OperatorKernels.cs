using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Loom.Core.Kernels;

namespace Loom.Inference;

/// <summary>
/// The operators of a forward pass between the matrix products: norms, rotary embeddings and decode attention's
/// scores, softmax and weighted sum. Kept apart so the kernel suite measures the very code a forward pass runs; each
/// entry point is compiled fully optimized from its first call, as the matrix kernels are (a decode loop would
/// otherwise run tier-0 code for its first tokens, and so did the kernel suite's short runs).
/// </summary>
internal static unsafe class OperatorKernels
{
    // As ggml: the squares are summed in double, the scale is computed in float.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RmsNorm(ReadOnlySpan<float> x, Span<float> y, float epsilon)
    {
        double sum = 0;
        foreach (float value in x) sum += value * value;
        float mean = (float)(sum / x.Length);
        TensorPrimitives.Multiply(x, 1f / MathF.Sqrt(mean + epsilon), y);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void LayerNorm(ReadOnlySpan<float> x, Span<float> y, float epsilon)
    {
        double sum = 0;
        foreach (float value in x) sum += value;
        float mean = (float)(sum / x.Length);
        TensorPrimitives.Subtract(x, mean, y);
        double squares = 0;
        foreach (float value in y) squares += value * value;
        float variance = (float)(squares / x.Length);
        TensorPrimitives.Multiply(y, 1f / MathF.Sqrt(variance + epsilon), y);
    }

    /// <summary>weights ← softmax(weights), in place: max subtracted, exponentials, divided by their sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Softmax(Span<float> weights)
    {
        float max = TensorPrimitives.Max(weights);
        TensorPrimitives.Subtract(weights, max, weights);
        TensorPrimitives.Exp(weights, weights);
        TensorPrimitives.Multiply(weights, 1f / TensorPrimitives.Sum(weights), weights);
    }

    /// <summary>
    /// Applies RoPE to <paramref name="heads"/> heads (<paramref name="headLength"/> floats each) of each of
    /// <paramref name="n"/> tokens, in place: <paramref name="pairs"/> rotated pairs per head, token t's angles at
    /// cos/sin + t·pairs; NeoX pairs (i, i + pairs), the normal mode (2i, 2i+1).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Rotate(float* data, int n, int heads, int headLength, int pairs, bool neox, float* cosines, float* sines)
    {
        for (int t = 0; t < n; t++)
        {
            float* cos = cosines + (long)t * pairs, sin = sines + (long)t * pairs;
            for (int h = 0; h < heads; h++)
            {
                float* v = data + ((long)t * heads + h) * headLength;
                // Normal mode pairs (2i, 2i+1); NeoX pairs (i, i + n_rot/2). Dimensions past n_rot stay as they are.
                int stride = neox ? 1 : 2, offset = neox ? pairs : 1;
                for (int i = 0; i < pairs; i++)
                {
                    float* a = v + i * stride;
                    float x0 = a[0], x1 = a[offset];
                    a[0] = x0 * cos[i] - x1 * sin[i];
                    a[offset] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }

    // Decode attends one query to every cached position with head-sized (64–128 float) vectors: per-position library
    // calls cost more than the arithmetic, so these loops keep each dot product (or the output slice) in registers.

    /// <summary>
    /// scores[g·scoresStride + j] = (q_g · k_j)·scale for j &lt; count and each of the <paramref name="group"/> query
    /// heads that share one key/value head (queries <paramref name="length"/> floats apart, length a multiple of 8).
    /// Two or three heads go through four positions at a time, so each key load serves every head of them (a lone head
    /// takes eight positions at a time); given a block of rows, the keys stay in L1 while the heads go through them.
    /// Every score is the same chain of multiply-adds over the dimensions in order and the same reduction whatever the
    /// grouping, so a score's bits do not depend on the group.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ScoresGroup(float* q, int group, float* keys, int length, int count, float scale, float* scores, int scoresStride) =>
        ScoresGroup<FloatRows>(q, group, (byte*)keys, length, count, scale, scores, scoresStride);

    /// <summary><see cref="ScoresGroup(float*, int, float*, int, int, float, float*, int)"/> over rows read as <typeparamref name="TRows"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScoresGroup<TRows>(float* q, int group, byte* keys, int length, int count, float scale, float* scores, int scoresStride)
        where TRows : struct, IRowValues
    {
        int g = 0;
        for (int heads; (heads = HeadsTogether(group - g)) > 1; g += heads)
        {
            float* query = q + g * length, row = scores + (long)g * scoresStride;
            for (int j = 0; j < count; j += 4)
            {
                long first = (long)j * length;
                int n = Math.Min(4, count - j);
                if (heads == 3) ScoresFour<TRows, ThreeHeads>(query, keys, first, length, n, scale, row + j, scoresStride);
                else ScoresFour<TRows, TwoHeads>(query, keys, first, length, n, scale, row + j, scoresStride);
            }
        }
        for (; g < group; g++)
            for (int j = 0; j < count; j += 8)
                ScoresEight<TRows>(q + g * length, keys, (long)j * length, length, Math.Min(8, count - j), scale, scores + (long)g * scoresStride + j);
    }

    /// <summary>How many of <paramref name="remaining"/> heads go through the rows together: three, or two where three would leave one alone.</summary>
    private static int HeadsTogether(int remaining) => remaining switch { < 2 => remaining, 2 or 4 => 2, _ => 3 };

    /// <summary>Heads a kernel takes at once, as a type, so that each count compiles its own loop.</summary>
    private interface IHeadCount
    {
        static abstract int Count { get; }
    }

    private struct TwoHeads : IHeadCount
    {
        public static int Count => 2;
    }

    private struct ThreeHeads : IHeadCount
    {
        public static int Count => 3;
    }

    /// <summary>
    /// The scores of <typeparamref name="THeads"/> (three or two: each compiles its own copy, without the third head's
    /// work for two) at n ≤ 4 consecutive positions from row <paramref name="first"/> (an element index
    /// into <paramref name="keys"/>): twelve (or eight) accumulator chains over the
    /// dimensions in order, reduced as <see cref="SumEach"/> reduces them. Positions past n repeat the last one, read
    /// but never stored.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScoresFour<TRows, THeads>(float* q, byte* keys, long first, int length, int n, float scale, float* scores, int scoresStride)
        where TRows : struct, IRowValues where THeads : struct, IHeadCount
    {
        bool three = THeads.Count == 3;
        long k0 = first, k1 = first + Math.Min(1, n - 1) * length, k2 = first + Math.Min(2, n - 1) * length, k3 = first + Math.Min(3, n - 1) * length;
        // the third head's work sits behind `three`, a constant per copy: left to dead-code removal, its loop-carried
        // accumulators were kept (twelve FMAs per step for two heads)
        float* q0 = q, q1 = q + length, q2 = q + 2 * length;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default;
        for (int d = 0; d < length; d += 8)
        {
            var x0 = Vector256.Load(q0 + d);
            var x1 = Vector256.Load(q1 + d);
            var x2 = three ? Vector256.Load(q2 + d) : default;
            var k = TRows.Eight(keys, k0 + d);
            a0 = Vector256.MultiplyAddEstimate(x0, k, a0);
            b0 = Vector256.MultiplyAddEstimate(x1, k, b0);
            if (three) c0 = Vector256.MultiplyAddEstimate(x2, k, c0);
            k = TRows.Eight(keys, k1 + d);
            a1 = Vector256.MultiplyAddEstimate(x0, k, a1);
            b1 = Vector256.MultiplyAddEstimate(x1, k, b1);
            if (three) c1 = Vector256.MultiplyAddEstimate(x2, k, c1);
            k = TRows.Eight(keys, k2 + d);
            a2 = Vector256.MultiplyAddEstimate(x0, k, a2);
            b2 = Vector256.MultiplyAddEstimate(x1, k, b2);
            if (three) c2 = Vector256.MultiplyAddEstimate(x2, k, c2);
            k = TRows.Eight(keys, k3 + d);
            a3 = Vector256.MultiplyAddEstimate(x0, k, a3);
            b3 = Vector256.MultiplyAddEstimate(x1, k, b3);
            if (three) c3 = Vector256.MultiplyAddEstimate(x2, k, c3);
        }
        StoreFour(SumEach(a0, a1, a2, a3) * scale, scores, n);
        StoreFour(SumEach(b0, b1, b2, b3) * scale, scores + scoresStride, n);
        if (three) StoreFour(SumEach(c0, c1, c2, c3) * scale, scores + 2L * scoresStride, n);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreFour(Vector128<float> sums, float* row, int n)
    {
        if (n == 4) sums.Store(row);
        else
            for (int p = 0; p < n; p++) row[p] = sums.GetElement(p);
    }

    /// <summary>
    /// One head's scores at <paramref name="n"/> ≤ 8 consecutive positions from row <paramref name="first"/>: one accumulator chain per position over the
    /// dimensions in order (eight independent chains), the eight sums reduced together and stored as one vector.
    /// Positions past n repeat the last one, read but never stored.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScoresEight<TRows>(float* q, byte* keys, long first, int length, int n, float scale, float* scores)
        where TRows : struct, IRowValues
    {
        long k0 = first, k1 = first + Math.Min(1, n - 1) * length, k2 = first + Math.Min(2, n - 1) * length, k3 = first + Math.Min(3, n - 1) * length;
        long k4 = first + Math.Min(4, n - 1) * length, k5 = first + Math.Min(5, n - 1) * length, k6 = first + Math.Min(6, n - 1) * length;
        long k7 = first + Math.Min(7, n - 1) * length;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int d = 0; d < length; d += 8)
        {
            var x = Vector256.Load(q + d);
            a0 = Vector256.MultiplyAddEstimate(x, TRows.Eight(keys, k0 + d), a0);
            a1 = Vector256.MultiplyAddEstimate(x, TRows.Eight(keys, k1 + d), a1);
            a2 = Vector256.MultiplyAddEstimate(x, TRows.Eight(keys, k2 + d), a2);
            a3 = Vector256.MultiplyAddEstimate(x, TRows.Eight(keys, k3 + d), a3);
            a4 = Vector256.MultiplyAddEstimate(x, TRows.Eight(keys, k4 + d), a4);
            a5 = Vector256.MultiplyAddEstimate(x, TRows.Eight(keys, k5 + d), a5);
            a6 = Vector256.MultiplyAddEstimate(x, TRows.Eight(keys, k6 + d), a6);
            a7 = Vector256.MultiplyAddEstimate(x, TRows.Eight(keys, k7 + d), a7);
        }
        var sums = SumEach(a0, a1, a2, a3, a4, a5, a6, a7) * scale;
        if (n == 8) sums.Store(scores);
        else
            for (int p = 0; p < n; p++) scores[p] = sums.GetElement(p);
    }

    /// <summary>The horizontal sums of four vectors, each reduced in the order <see cref="SumEach(Vector256{float}, Vector256{float}, Vector256{float}, Vector256{float}, Vector256{float}, Vector256{float}, Vector256{float}, Vector256{float})"/> takes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> SumEach(Vector256<float> v0, Vector256<float> v1, Vector256<float> v2, Vector256<float> v3)
    {
        if (!Avx.IsSupported) return Vector128.Create(Vector256.Sum(v0), Vector256.Sum(v1), Vector256.Sum(v2), Vector256.Sum(v3));
        var sums = Avx.HorizontalAdd(Avx.HorizontalAdd(v0, v1), Avx.HorizontalAdd(v2, v3));
        return sums.GetLower() + sums.GetUpper();
    }

    /// <summary>The horizontal sums of eight vectors, as one vector (element i is the sum of vi's lanes).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> SumEach(Vector256<float> v0, Vector256<float> v1, Vector256<float> v2, Vector256<float> v3,
        Vector256<float> v4, Vector256<float> v5, Vector256<float> v6, Vector256<float> v7)
    {
        if (!Avx.IsSupported)
            return Vector256.Create(Vector256.Sum(v0), Vector256.Sum(v1), Vector256.Sum(v2), Vector256.Sum(v3),
                Vector256.Sum(v4), Vector256.Sum(v5), Vector256.Sum(v6), Vector256.Sum(v7));
        // pairwise sums within each 128-bit half, then the two halves added: lanes 0–3 from v0–v3, 4–7 from v4–v7
        var low = Avx.HorizontalAdd(Avx.HorizontalAdd(v0, v1), Avx.HorizontalAdd(v2, v3));
        var high = Avx.HorizontalAdd(Avx.HorizontalAdd(v4, v5), Avx.HorizontalAdd(v6, v7));
        return Avx.Permute2x128(low, high, 0x20) + Avx.Permute2x128(low, high, 0x31);
    }

    /// <summary>
    /// output_g = Σ_j weights_g[j]·v_j over count rows of length floats (a multiple of 8) for the
    /// <paramref name="group"/> query heads that share one key/value head (weights <paramref name="weightsStride"/>
    /// apart, outputs <paramref name="length"/> apart). The heads go through a block of value rows at a time, so each
    /// row is read from memory once, and two or three heads take each row's vectors together (a lone head takes 64
    /// columns at a time). Each output is the one chain of multiply-adds over the rows in order that a single head gets
    /// (its partial sums pass through the output between blocks), so the bits do not depend on the group.
    /// </summary>
    /// <param name="accumulate">Continue the sums already in <paramref name="output"/> (rows before these) instead of starting at zero.</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void WeightedSumGroup(float* values, int length, int count, float* weights, int weightsStride, int group, float* output, bool accumulate = false) =>
        WeightedSumGroup<FloatRows>((byte*)values, length, count, weights, weightsStride, group, output, accumulate);

    /// <summary><see cref="WeightedSumGroup(float*, int, int, float*, int, int, float*, bool)"/> over rows read as <typeparamref name="TRows"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WeightedSumGroup<TRows>(byte* values, int length, int count, float* weights, int weightsStride, int group, float* output,
        bool accumulate) where TRows : struct, IRowValues
    {
        // 16 KiB of value rows stay in L1 across the heads; one head needs no blocks
        int block = group == 1 ? count : Math.Max(1, 4096 / length);
        for (int from = 0; from < count; from += block)
        {
            int to = Math.Min(count, from + block);
            bool continued = accumulate || from > 0;
            int g = 0;
            for (int heads; (heads = HeadsTogether(group - g)) > 1; g += heads)
            {
                float* headWeights = weights + (long)g * weightsStride, headOutput = output + (long)g * length;
                if (heads == 3) WeightedSumHeads<TRows, ThreeHeads>(values, length, from, to, headWeights, weightsStride, headOutput, continued);
                else WeightedSumHeads<TRows, TwoHeads>(values, length, from, to, headWeights, weightsStride, headOutput, continued);
            }
            for (; g < group; g++)
                WeightedSumRange<TRows>(values, length, from, to, weights + (long)g * weightsStride, output + (long)g * length, continued);
        }
    }

    /// <summary>
    /// <see cref="WeightedSumRange{TRows}"/> for <typeparamref name="THeads"/> (three or two) heads at once, 32 columns
    /// at a time: each value vector loaded serves every head. Head h's weights are <paramref name="weightsStride"/>
    /// apart, its outputs <paramref name="length"/> apart.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WeightedSumHeads<TRows, THeads>(byte* values, int length, int from, int to, float* weights, int weightsStride, float* output,
        bool accumulate) where TRows : struct, IRowValues where THeads : struct, IHeadCount
    {
        bool three = THeads.Count == 3;
        // as in ScoresFour, the third head's work sits behind the constant `three`
        float* wa = weights, wb = weights + weightsStride, wc = weights + 2L * weightsStride;
        for (int d = 0; d < length; d += 32)
        {
            int width = Math.Min(32, length - d);
            float* oa = output + d, ob = oa + length, oc = ob + length;
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default;
            if (accumulate)
            {
                (a0, a1, a2, a3) = LoadUpTo32(oa, width);
                (b0, b1, b2, b3) = LoadUpTo32(ob, width);
                if (three) (c0, c1, c2, c3) = LoadUpTo32(oc, width);
            }
            long v = (long)from * length + d;
            for (int j = from; j < to; j++, v += length)
            {
                var x = Vector256.Create(TRows.Weight(wa[j]));
                var y = Vector256.Create(TRows.Weight(wb[j]));
                var z = three ? Vector256.Create(TRows.Weight(wc[j])) : default;
                var row = TRows.Eight(values, v);
                a0 = Vector256.MultiplyAddEstimate(row, x, a0);
                b0 = Vector256.MultiplyAddEstimate(row, y, b0);
                if (three) c0 = Vector256.MultiplyAddEstimate(row, z, c0);
                if (width > 8)
                {
                    row = TRows.Eight(values, v + 8);
                    a1 = Vector256.MultiplyAddEstimate(row, x, a1);
                    b1 = Vector256.MultiplyAddEstimate(row, y, b1);
                    if (three) c1 = Vector256.MultiplyAddEstimate(row, z, c1);
                }
                if (width > 16)
                {
                    row = TRows.Eight(values, v + 16);
                    a2 = Vector256.MultiplyAddEstimate(row, x, a2);
                    b2 = Vector256.MultiplyAddEstimate(row, y, b2);
                    if (three) c2 = Vector256.MultiplyAddEstimate(row, z, c2);
                }
                if (width > 24)
                {
                    row = TRows.Eight(values, v + 24);
                    a3 = Vector256.MultiplyAddEstimate(row, x, a3);
                    b3 = Vector256.MultiplyAddEstimate(row, y, b3);
                    if (three) c3 = Vector256.MultiplyAddEstimate(row, z, c3);
                }
            }
            StoreUpTo32(oa, width, a0, a1, a2, a3);
            StoreUpTo32(ob, width, b0, b1, b2, b3);
            if (three) StoreUpTo32(oc, width, c0, c1, c2, c3);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector256<float>, Vector256<float>, Vector256<float>, Vector256<float>) LoadUpTo32(float* o, int width) =>
        (Vector256.Load(o), width > 8 ? Vector256.Load(o + 8) : default, width > 16 ? Vector256.Load(o + 16) : default,
            width > 24 ? Vector256.Load(o + 24) : default);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreUpTo32(float* o, int width, Vector256<float> v0, Vector256<float> v1, Vector256<float> v2, Vector256<float> v3)
    {
        v0.Store(o);
        if (width > 8) v1.Store(o + 8);
        if (width > 16) v2.Store(o + 16);
        if (width > 24) v3.Store(o + 24);
    }

    /// <summary>
    /// One head's weighted sum over the rows [<paramref name="from"/>, <paramref name="to"/>), continuing the sums
    /// already in <paramref name="output"/> when <paramref name="accumulate"/> is set.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WeightedSumRange<TRows>(byte* values, int length, int from, int to, float* weights, float* output, bool accumulate)
        where TRows : struct, IRowValues
    {
        for (int d = 0; d < length; d += 64)
        {
            int width = Math.Min(64, length - d);
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            float* o = output + d;
            if (accumulate)
            {
                a0 = Vector256.Load(o);
                if (width > 8) a1 = Vector256.Load(o + 8);
                if (width > 16) a2 = Vector256.Load(o + 16);
                if (width > 24) a3 = Vector256.Load(o + 24);
                if (width > 32) a4 = Vector256.Load(o + 32);
                if (width > 40) a5 = Vector256.Load(o + 40);
                if (width > 48) a6 = Vector256.Load(o + 48);
                if (width > 56) a7 = Vector256.Load(o + 56);
            }
            long v = (long)from * length + d;
            for (int j = from; j < to; j++, v += length)
            {
                var w = Vector256.Create(TRows.Weight(weights[j]));
                a0 = Vector256.MultiplyAddEstimate(TRows.Eight(values, v), w, a0);
                if (width > 8) a1 = Vector256.MultiplyAddEstimate(TRows.Eight(values, v + 8), w, a1);
                if (width > 16) a2 = Vector256.MultiplyAddEstimate(TRows.Eight(values, v + 16), w, a2);
                if (width > 24) a3 = Vector256.MultiplyAddEstimate(TRows.Eight(values, v + 24), w, a3);
                if (width > 32) a4 = Vector256.MultiplyAddEstimate(TRows.Eight(values, v + 32), w, a4);
                if (width > 40) a5 = Vector256.MultiplyAddEstimate(TRows.Eight(values, v + 40), w, a5);
                if (width > 48) a6 = Vector256.MultiplyAddEstimate(TRows.Eight(values, v + 48), w, a6);
                if (width > 56) a7 = Vector256.MultiplyAddEstimate(TRows.Eight(values, v + 56), w, a7);
            }
            a0.Store(o);
            if (width > 8) a1.Store(o + 8);
            if (width > 16) a2.Store(o + 16);
            if (width > 24) a3.Store(o + 24);
            if (width > 32) a4.Store(o + 32);
            if (width > 40) a5.Store(o + 40);
            if (width > 48) a6.Store(o + 48);
            if (width > 56) a7.Store(o + 56);
        }
    }

    // An F16 cache is read a block of rows at a time: each block is converted to floats once (into an L1-sized scratch)
    // and every head of the group, for every query token of the block, then runs the F32 kernels on it; converting
    // inside the kernels would repeat the work for every head and token. The conversion is exact, so the bits are those
    // of F32 rows holding the same halves. Caches known to hold no Inf/NaN take the short conversion of the F16 matrix
    // kernels (FloatKernels.FiniteHalvesToSingles); TensorPrimitives' general one runs about three times slower.
    // One query token (decode) has nothing to share a conversion with: the kernels read such a cache's halves in place,
    // as w·2^-112 (three operations per vector and no pass through the scratch), against queries and weights scaled by
    // 2^112. Each product is then exactly the one of the converted rows, so every FMA rounds as there: the same bits.

    /// <summary>How the attention kernels read eight values of a cached row, and the factor their partners take.</summary>
    private interface IRowValues
    {
        static abstract Vector256<float> Eight(byte* rows, long index);
        /// <summary>A softmax weight as the weighted sum multiplies it by these values.</summary>
        static abstract float Weight(float weight);
    }

    /// <summary>Float rows, read as they are.</summary>
    private struct FloatRows : IRowValues
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Eight(byte* rows, long index) => Vector256.Load((float*)rows + index);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Weight(float weight) => weight;
    }

    /// <summary>
    /// Finite F16 rows read in place as w·2^-112: queries must come scaled by 2^112 (exact below
    /// <see cref="FloatKernels.F16ScaledInputLimit"/>), and weights (at most 1) are scaled here, exactly.
    /// </summary>
    private struct ScaledHalfRows : IRowValues
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Eight(byte* rows, long index) => FloatKernels.RawHalvesAvx2((ushort*)rows + index);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Weight(float weight) => weight * FloatKernels.F16InputScale;
    }

    /// <summary>Floats converted per block; the F16 kernels' scratch holds max(this, length) floats.</summary>
    public const int HalfBlockFloats = 4096;

    /// <summary>
    /// The scores of <paramref name="tokens"/> consecutive query tokens of one sequence, for the <paramref name="group"/>
    /// query heads of one key/value head: token i (queries at <paramref name="q"/> + i·queryStride) sees the first
    /// <paramref name="firstVisible"/> + i cached positions, and head g's scores go to row i·group + g of
    /// <paramref name="scores"/>. The keys are read <see cref="HalfBlockFloats"/> at a time for all the tokens (F16 rows
    /// converted once per block into <paramref name="scratch"/>), so a prompt's tokens do not each convert and fetch the
    /// whole cache again; one token reads a finite F16 cache in place instead (see <see cref="ReadsHalvesInPlace"/>).
    /// Every score is the one <see cref="ScoresGroup"/> gives that token alone.
    /// </summary>
    /// <param name="keys">Cached key rows of <paramref name="length"/> floats, or halves when <paramref name="halves"/>.</param>
    /// <param name="finite">F16 keys hold no Inf or NaN (<see cref="FloatKernels.FiniteHalvesToSingles"/> may convert them).</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ScoresTokens(float* q, long queryStride, int tokens, int group, void* keys, bool halves, bool finite, int length,
        int firstVisible, float scale, float* scores, int scoresStride, float* scratch)
    {
        if (tokens == 1 && ReadsHalvesInPlace(halves, finite, group) && ScaledQueries(q, group * length, scratch))
        {
            ScoresGroup<ScaledHalfRows>(scratch, group, (byte*)keys, length, firstVisible, scale, scores, scoresStride);
            return;
        }
        int lastVisible = firstVisible + tokens - 1, rows = BlockRows(length);
        for (int from = 0; from < lastVisible; from += rows)
        {
            int n = Math.Min(rows, lastVisible - from);
            float* block = Rows(keys, halves, finite, length, from, n, scratch);
            // token i sees position `from` once firstVisible + i > from
            for (int i = Math.Max(0, from + 1 - firstVisible); i < tokens; i++)
                ScoresGroup(q + i * queryStride, group, block, length, Math.Min(n, firstVisible + i - from), scale,
                    scores + (long)i * group * scoresStride + from, scoresStride);
        }
    }

    /// <summary>
    /// <see cref="WeightedSumGroup"/> for the tokens of <see cref="ScoresTokens"/>: token i's heads weigh its first
    /// <paramref name="firstVisible"/> + i value rows by score rows i·group + g and write to <paramref name="output"/> +
    /// i·outputStride (heads <paramref name="length"/> apart). The values are read a block at a time for all the
    /// tokens; each output is the chain of multiply-adds over the rows in order that the token alone gets.
    /// </summary>
    /// <param name="weights">Softmax rows: every weight at most 1 (one token's F16 path scales them by 2^112).</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void WeightedSumTokens(void* values, bool halves, bool finite, int length, int tokens, int firstVisible,
        float* weights, int weightsStride, int group, float* output, long outputStride, float* scratch)
    {
        if (tokens == 1 && ReadsHalvesInPlace(halves, finite, group))
        {
            WeightedSumGroup<ScaledHalfRows>((byte*)values, length, firstVisible, weights, weightsStride, group, output, accumulate: false);
            return;
        }
        int lastVisible = firstVisible + tokens - 1, rows = BlockRows(length);
        for (int from = 0; from < lastVisible; from += rows)
        {
            int n = Math.Min(rows, lastVisible - from);
            float* block = Rows(values, halves, finite, length, from, n, scratch);
            for (int i = Math.Max(0, from + 1 - firstVisible); i < tokens; i++)
                WeightedSumGroup(block, length, Math.Min(n, firstVisible + i - from), weights + (long)i * group * weightsStride + from,
                    weightsStride, group, output + i * outputStride, accumulate: from > 0);
        }
    }

    /// <summary>
    /// Whether one token's attention reads the cache's halves in place (<see cref="ScaledHalfRows"/>): for groups of up
    /// to four heads, which take the rows in one or two passes (<see cref="HeadsTogether"/>), each pass widening them
    /// again. One query token against 256–2048 cached rows of 64 (Zen 3, one thread, alternating with block conversion),
    /// scores and weighted sum together: 1.8–2.6× as fast for one head, 1.7–1.8× for two, 1.1–1.7× for three, 1.3× for
    /// four; five and six heads 0.9–1.3×, seven no faster.
    /// </summary>
    private static bool ReadsHalvesInPlace(bool halves, bool finite, int group) =>
        halves && finite && group <= MaxInPlaceGroup && Avx2.IsSupported;

    private const int MaxInPlaceGroup = 4;

    /// <summary>
    /// The <paramref name="count"/> query values scaled by 2^112 into <paramref name="scaled"/> (which holds
    /// <see cref="HalfBlockFloats"/>), when they fit it and stay finite scaled; false leaves the block conversion to them.
    /// </summary>
    private static bool ScaledQueries(float* q, int count, float* scaled)
    {
        if (count > HalfBlockFloats) return false;
        var queries = new ReadOnlySpan<float>(q, count);
        if (!(MathF.Abs(TensorPrimitives.MaxMagnitude(queries)) < FloatKernels.F16ScaledInputLimit)) return false;
        TensorPrimitives.Multiply(queries, FloatKernels.F16InputScale, new Span<float>(scaled, count));
        return true;
    }

    /// <summary>Cache rows read per block: <see cref="HalfBlockFloats"/> floats (at least one row).</summary>
    private static int BlockRows(int length) => Math.Max(1, HalfBlockFloats / length);

    /// <summary>Rows [from, from + n) of a cache as floats: in place for F32 rows, converted into scratch for F16.</summary>
    private static float* Rows(void* rows, bool halves, bool finite, int length, int from, int n, float* scratch)
    {
        if (!halves) return (float*)rows + (long)from * length;
        HalvesToSingles((Half*)rows + (long)from * length, scratch, n * length, finite);
        return scratch;
    }

    private static void HalvesToSingles(Half* source, float* destination, int count, bool finite)
    {
        if (finite) FloatKernels.FiniteHalvesToSingles((ushort*)source, destination, count);
        else TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(source, count), new Span<float>(destination, count));
    }
}
