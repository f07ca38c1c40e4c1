namespace Loom.Training;

/// <summary>
/// A dropout mask that is a pure function of (key, index): the backward pass recomputes it instead of storing it,
/// and it is the same whatever thread computes which element.
/// </summary>
internal readonly struct DropoutMask(ulong key, float rate)
{
    private readonly uint _threshold = (uint)Math.Min(rate * (1 << 24), 1 << 24);
    private readonly float _keepScale = rate > 0 ? 1f / (1f - rate) : 1f;

    public bool Active => _threshold > 0;

    /// <summary>0 for a dropped element, 1/(1 − rate) for a kept one.</summary>
    public float Factor(long index) =>
        (uint)(DeterministicRandom.Mix(key + (ulong)index * 0x9E3779B97F4A7C15UL) >> 40) >= _threshold ? _keepScale : 0f;

    public void Apply(Span<float> values)
    {
        if (!Active) return;
        for (int i = 0; i < values.Length; i++) values[i] *= Factor(i);
    }

    /// <summary>A mask for one site (layer × place) of one forward pass.</summary>
    public static DropoutMask For(ulong passKey, int layer, int site, float rate) =>
        new(DeterministicRandom.Mix(passKey ^ DeterministicRandom.Mix((ulong)(layer * 8 + site + 1))), rate);
}
