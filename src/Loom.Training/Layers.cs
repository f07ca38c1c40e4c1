using System.Numerics.Tensors;

namespace Loom.Training;

/// <summary>
/// The element-wise and per-token pieces of the decoder, each forward next to its backward. Backward functions
/// accumulate (+=) into input gradients that several paths feed (the residual stream, shared key/value heads).
/// </summary>
internal static class Layers
{
    /// <summary>y = x / rms(x) · w per row; saves 1/rms for the backward pass.</summary>
    public static void RmsNormForward(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> y, Span<float> inverseRms, int rows, float epsilon)
    {
        int dim = weight.Length;
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * dim, dim);
            var yr = y.Slice(r * dim, dim);
            float scale = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(xr) / dim + epsilon);
            inverseRms[r] = scale;
            TensorPrimitives.Multiply(xr, scale, yr);
            TensorPrimitives.Multiply(yr, weight, yr);
        }
    }

    /// <summary>dx += s·(dy⊙w) − x·s³·⟨dy⊙w, x⟩/dim and dw += Σ_rows dy⊙x·s, with s = 1/rms(x).</summary>
    public static void RmsNormBackward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> weight, ReadOnlySpan<float> inverseRms,
        Span<float> dx, Span<float> dWeight, Span<float> scratch, int rows)
    {
        int dim = weight.Length;
        var weighted = scratch[..dim];
        for (int r = 0; r < rows; r++)
        {
            var dyr = dy.Slice(r * dim, dim);
            var xr = x.Slice(r * dim, dim);
            var dxr = dx.Slice(r * dim, dim);
            float s = inverseRms[r];
            TensorPrimitives.Multiply(dyr, weight, weighted);
            float projection = TensorPrimitives.Dot(weighted, xr) * s * s * s / dim;
            for (int i = 0; i < dim; i++)
            {
                dxr[i] += s * weighted[i] - projection * xr[i];
                dWeight[i] += dyr[i] * xr[i] * s;
            }
        }
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
    /// Rotates adjacent pairs (2i, 2i+1) of every head in place — llama GGUF's "normal" RoPE layout. With
    /// <paramref name="inverse"/> it rotates by the opposite angle, which is the backward pass (a rotation's
    /// transpose is its inverse).
    /// </summary>
    public static void Rope(Span<float> data, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, int rows, int seqLen, int heads, int headDim, bool inverse)
    {
        int pairs = headDim / 2;
        float direction = inverse ? -1f : 1f;
        for (int r = 0; r < rows; r++)
        {
            int t = r % seqLen;
            var c = cos.Slice(t * pairs, pairs);
            var s = sin.Slice(t * pairs, pairs);
            for (int h = 0; h < heads; h++)
            {
                var v = data.Slice((r * heads + h) * headDim, headDim);
                for (int i = 0; i < pairs; i++)
                {
                    float x0 = v[2 * i], x1 = v[2 * i + 1], sn = direction * s[i];
                    v[2 * i] = x0 * c[i] - x1 * sn;
                    v[2 * i + 1] = x0 * sn + x1 * c[i];
                }
            }
        }
    }

    /// <summary>h = silu(g)·u.</summary>
    public static void SwiGluForward(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> h)
    {
        for (int i = 0; i < h.Length; i++)
        {
            float g = gate[i];
            h[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }

    /// <summary>dg = dh·u·σ(g)(1 + g(1 − σ(g))), du = dh·silu(g).</summary>
    public static void SwiGluBackward(ReadOnlySpan<float> dh, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dGate, Span<float> dUp)
    {
        for (int i = 0; i < dh.Length; i++)
        {
            float g = gate[i];
            float sigmoid = 1f / (1f + MathF.Exp(-g));
            dUp[i] = dh[i] * g * sigmoid;
            dGate[i] = dh[i] * up[i] * sigmoid * (1f + g * (1f - sigmoid));
        }
    }

    /// <summary>
    /// Mean cross-entropy over rows; turns <paramref name="logits"/> into its gradient dlogits = (softmax − onehot)·scale/rows
    /// in place when <paramref name="gradientScale"/> is not null.
    /// </summary>
    public static double CrossEntropy(Span<float> logits, ReadOnlySpan<int> targets, int vocab, float? gradientScale)
    {
        int rows = targets.Length;
        double total = 0;
        for (int r = 0; r < rows; r++)
        {
            var row = logits.Slice(r * vocab, vocab);
            int target = targets[r];
            if ((uint)target >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(targets), target, $"target token outside the vocabulary of {vocab}");
            float max = TensorPrimitives.Max(row);
            double sum = 0;
            foreach (float v in row) sum += Math.Exp(v - max);
            double logSum = Math.Log(sum) + max;
            total += logSum - row[target];
            if (gradientScale is float scale)
            {
                float factor = scale / rows;
                for (int i = 0; i < vocab; i++) row[i] = (float)Math.Exp(row[i] - logSum) * factor;
                row[target] -= factor;
            }
        }
        return total / rows;
    }
}
