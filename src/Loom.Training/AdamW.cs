using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace Loom.Training;

/// <summary>
/// AdamW with decoupled weight decay (Loshchilov &amp; Hutter), in PyTorch's formulation: p ← p·(1 − lr·λ), then
/// p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε). Weight decay applies only to slots marked as decaying (the
/// matrices), not to norm gains.
/// </summary>
public sealed class AdamW
{
    // Elements per piece of work (a multiple of the vector width): four arrays of it fit in L2.
    private const int PieceLength = 1 << 15;

    private readonly ParameterLayout _layout;
    private readonly (TensorSlot Slot, int Start, int Length)[] _pieces;

    public AdamW(ParameterLayout layout, float beta1 = 0.9f, float beta2 = 0.95f, float epsilon = 1e-8f, float weightDecay = 0.1f)
    {
        if (!(beta1 >= 0 && beta1 < 1)) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, "must be in [0, 1)");
        if (!(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, "must be in [0, 1)");
        if (!(epsilon > 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "must be positive");
        if (!(weightDecay >= 0)) throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "must not be negative");
        _layout = layout;
        _pieces = Pieces(layout);
        Beta1 = beta1;
        Beta2 = beta2;
        Epsilon = epsilon;
        WeightDecay = weightDecay;
        FirstMoment = new float[layout.Count];
        SecondMoment = new float[layout.Count];
    }

    public float Beta1 { get; }
    public float Beta2 { get; }
    public float Epsilon { get; }
    public float WeightDecay { get; }
    /// <summary>Steps taken so far (the bias corrections use it).</summary>
    public long Step { get; set; }
    public float[] FirstMoment { get; }
    public float[] SecondMoment { get; }

    /// <summary>One step. Every element is updated on its own, so the threads split the slots into pieces freely.</summary>
    public void Update(float[] parameters, float[] gradients, float learningRate, int threads = 1)
    {
        if (parameters.Length < _layout.Count || gradients.Length < _layout.Count)
            throw new ArgumentException($"parameters and gradients must hold {_layout.Count} values, got {parameters.Length} and {gradients.Length}");
        Step++;
        float correction1 = 1f - MathF.Pow(Beta1, Step);
        float correction2Root = MathF.Sqrt(1f - MathF.Pow(Beta2, Step));
        float stepSize = learningRate / correction1;
        WorkerPool.Get(threads).For(_pieces.Length, index =>
        {
            var (slot, start, length) = _pieces[index];
            var p = slot.Of(parameters).Slice(start, length);
            var g = slot.Of(gradients).Slice(start, length);
            var m = slot.Of(FirstMoment).Slice(start, length);
            var v = slot.Of(SecondMoment).Slice(start, length);
            float decay = slot.Decays ? 1f - learningRate * WeightDecay : 1f;
            UpdateSlot(p, g, m, v, decay, stepSize, correction2Root);
        });
    }

    /// <summary>The slots cut into pieces of at most <see cref="PieceLength"/> elements, for the threads to share.</summary>
    private static (TensorSlot Slot, int Start, int Length)[] Pieces(ParameterLayout layout) =>
        layout.Slots.SelectMany(slot => Enumerable.Range(0, (slot.Length + PieceLength - 1) / PieceLength)
            .Select(piece => (slot, piece * PieceLength, Math.Min(PieceLength, slot.Length - piece * PieceLength)))).ToArray();

    /// <summary>
    /// One slot's update, in vectors and then a scalar tail that performs the very same operations in the same order,
    /// so every element gets the same bits whichever part handles it.
    /// </summary>
    private void UpdateSlot(Span<float> p, Span<float> g, Span<float> m, Span<float> v, float decay, float stepSize, float correction2Root)
    {
        float keep1 = 1f - Beta1, keep2 = 1f - Beta2;
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var vKeep1 = Vector256.Create(keep1);
            var vBeta2 = Vector256.Create(Beta2);
            var vKeep2 = Vector256.Create(keep2);
            var vDecay = Vector256.Create(decay);
            var vStep = Vector256.Create(stepSize);
            var vRoot = Vector256.Create(correction2Root);
            var vEpsilon = Vector256.Create(Epsilon);
            for (; i + 8 <= p.Length; i += 8)
            {
                var gi = Vector256.Create<float>(g[i..]);
                var mi = Vector256.Create<float>(m[i..]);
                var vi = Vector256.Create<float>(v[i..]);
                mi += (gi - mi) * vKeep1;
                vi = vi * vBeta2 + vKeep2 * gi * gi;
                mi.CopyTo(m[i..]);
                vi.CopyTo(v[i..]);
                var pi = Vector256.Create<float>(p[i..]);
                (pi * vDecay - vStep * mi / (Vector256.Sqrt(vi) / vRoot + vEpsilon)).CopyTo(p[i..]);
            }
        }
        for (; i < p.Length; i++)
        {
            float gi = g[i];
            float mi = m[i] + (gi - m[i]) * keep1;
            float vi = v[i] * Beta2 + keep2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = p[i] * decay - stepSize * mi / (MathF.Sqrt(vi) / correction2Root + Epsilon);
        }
    }
}

/// <summary>Linear warm-up to the peak rate, then cosine decay to the floor at the last step.</summary>
public sealed record LearningRateSchedule(float PeakRate, float MinimumRate, int WarmupSteps, int TotalSteps)
{
    /// <summary>Rate for the 0-based optimizer step.</summary>
    public float At(long step)
    {
        if (step < WarmupSteps) return PeakRate * (step + 1) / WarmupSteps;
        if (step >= TotalSteps) return MinimumRate;
        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        return (float)(MinimumRate + 0.5 * (PeakRate - MinimumRate) * (1 + Math.Cos(Math.PI * progress)));
    }
}

public static class GradientClipping
{
    /// <summary>
    /// Scales gradients so their global L2 norm is at most <paramref name="maxNorm"/> (as torch's clip_grad_norm_:
    /// factor maxNorm / (norm + 1e-6), applied only when below 1). Returns the norm before clipping. The norm is one
    /// library call (its summation order is the library's); the scaling is split between threads.
    /// </summary>
    public static float ClipByGlobalNorm(float[] gradients, float maxNorm, int threads = 1)
    {
        float norm = TensorPrimitives.Norm(gradients);
        float factor = maxNorm / (norm + 1e-6f);
        if (factor < 1f)
            Layers.ForChunks(gradients.Length, threads, (start, length) =>
            {
                var part = gradients.AsSpan(start, length);
                TensorPrimitives.Multiply(part, factor, part);
            });
        return norm;
    }
}
