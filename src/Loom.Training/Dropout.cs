using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Loom.Training;

/// <summary>
/// A dropout mask that is a pure function of (key, index): the backward pass recomputes it instead of storing it,
/// and it is the same whatever thread computes which element.
/// </summary>
internal readonly struct DropoutMask(ulong key, float rate)
{
    private const ulong Golden = DeterministicRandom.Golden;
    // Lane i of a vector hashes index first + i: i·Golden apart (wrapping, as the scalar product does).
    private static readonly Vector256<ulong> LaneSteps = Vector256.Create(0UL, Golden, unchecked(2 * Golden), unchecked(3 * Golden));
    private readonly uint _threshold = (uint)Math.Min(rate * (1 << 24), 1 << 24);
    private readonly float _keepScale = rate > 0 ? 1f / (1f - rate) : 1f;

    public bool Active => _threshold > 0;

    /// <summary>0 for a dropped element, 1/(1 − rate) for a kept one.</summary>
    public float Factor(long index) =>
        (uint)(DeterministicRandom.Mix(key + (ulong)index * Golden) >> 40) >= _threshold ? _keepScale : 0f;

    /// <summary>target[i] = source[i] · Factor(first + i); source may be target.</summary>
    public void Apply(ReadOnlySpan<float> source, Span<float> target, long first)
    {
        int i = 0, count = source.Length;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 8 <= count; i += 8)
                (Vector256.Create<float>(source[i..]) * Factors(first + i)).CopyTo(target[i..]);
        for (; i < count; i++) target[i] = source[i] * Factor(first + i);
    }

    /// <summary>factors[i] = Factor(first + i).</summary>
    public void Fill(Span<float> factors, long first)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 8 <= factors.Length; i += 8)
                Factors(first + i).CopyTo(factors[i..]);
        for (; i < factors.Length; i++) factors[i] = Factor(first + i);
    }

    /// <summary>
    /// Factor(first + 0..7) in one vector: the same 64-bit integer hash in four lanes at a time, so the same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Vector256<float> Factors(long first)
    {
        var low = Vector256.Create(key + (ulong)first * Golden) + LaneSteps;
        var high = low + Vector256.Create(unchecked(4 * Golden));
        var threshold = Vector256.Create((ulong)_threshold);
        var kept = Vector256.Narrow(Vector256.GreaterThanOrEqual(DeterministicRandom.Mix(low) >> 40, threshold), Vector256.GreaterThanOrEqual(DeterministicRandom.Mix(high) >> 40, threshold));
        return Vector256.ConditionalSelect(kept.AsSingle(), Vector256.Create(_keepScale), Vector256<float>.Zero);
    }

    /// <summary>A mask for one site (layer × place) of one forward pass.</summary>
    public static DropoutMask For(ulong passKey, int layer, int site, float rate) =>
        new(DeterministicRandom.Mix(passKey ^ DeterministicRandom.Mix((ulong)(layer * 8 + site + 1))), rate);
}
