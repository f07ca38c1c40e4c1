using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

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
    /// heads that share one key/value head (queries <paramref name="length"/> floats apart, length a multiple of 16):
    /// position by position for all heads, so each key is read from memory once and from L1 for the other heads.
    /// A score's arithmetic does not depend on the group.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ScoresGroup(float* q, int group, float* keys, int length, int count, float scale, float* scores, int scoresStride)
    {
        for (int j = 0; j < count; j++, keys += length)
            for (int g = 0; g < group; g++)
            {
                float* query = q + g * length;
                Vector256<float> even = default, odd = default;
                for (int d = 0; d < length; d += 16)
                {
                    even = Vector256.MultiplyAddEstimate(Vector256.Load(query + d), Vector256.Load(keys + d), even);
                    odd = Vector256.MultiplyAddEstimate(Vector256.Load(query + d + 8), Vector256.Load(keys + d + 8), odd);
                }
                scores[(long)g * scoresStride + j] = Vector256.Sum(even + odd) * scale;
            }
    }

    /// <summary>
    /// output_g = Σ_j weights_g[j]·v_j over count rows of length floats (a multiple of 8), 64 columns at a time, for the
    /// <paramref name="group"/> query heads that share one key/value head (weights <paramref name="weightsStride"/>
    /// apart, outputs <paramref name="length"/> apart). Several heads go through a block of value rows at a time, so
    /// each row is read from memory once. Each output is the one chain of multiply-adds over the rows in order that a
    /// single head gets (its partial sums pass through the output between blocks), so the bits do not depend on the group.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void WeightedSumGroup(float* values, int length, int count, float* weights, int weightsStride, int group, float* output)
    {
        // 16 KiB of value rows stay in L1 across the heads; one head needs no blocks
        int block = group == 1 ? count : Math.Max(1, 4096 / length);
        for (int from = 0; from < count; from += block)
        {
            int to = Math.Min(count, from + block);
            for (int g = 0; g < group; g++)
                WeightedSumRange(values, length, from, to, weights + (long)g * weightsStride, output + (long)g * length, accumulate: from > 0);
        }
    }

    /// <summary>
    /// One head's weighted sum over the rows [<paramref name="from"/>, <paramref name="to"/>), continuing the sums
    /// already in <paramref name="output"/> when <paramref name="accumulate"/> is set.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightedSumRange(float* values, int length, int from, int to, float* weights, float* output, bool accumulate)
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
            float* v = values + (long)from * length + d;
            for (int j = from; j < to; j++, v += length)
            {
                var w = Vector256.Create(weights[j]);
                a0 = Vector256.MultiplyAddEstimate(Vector256.Load(v), w, a0);
                if (width > 8) a1 = Vector256.MultiplyAddEstimate(Vector256.Load(v + 8), w, a1);
                if (width > 16) a2 = Vector256.MultiplyAddEstimate(Vector256.Load(v + 16), w, a2);
                if (width > 24) a3 = Vector256.MultiplyAddEstimate(Vector256.Load(v + 24), w, a3);
                if (width > 32) a4 = Vector256.MultiplyAddEstimate(Vector256.Load(v + 32), w, a4);
                if (width > 40) a5 = Vector256.MultiplyAddEstimate(Vector256.Load(v + 40), w, a5);
                if (width > 48) a6 = Vector256.MultiplyAddEstimate(Vector256.Load(v + 48), w, a6);
                if (width > 56) a7 = Vector256.MultiplyAddEstimate(Vector256.Load(v + 56), w, a7);
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
}
