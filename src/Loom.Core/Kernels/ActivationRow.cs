namespace Loom.Core.Kernels;

/// <summary>
/// One input vector as the kernels see it: the floats, and (for quantized weights) its Q8 form —
/// levels, per-block scales, and per-block sums (d·Σq per 32 for Q8_1-style, Σq per 16 for Q8_K).
/// </summary>
internal readonly unsafe struct ActivationRow
{
    public readonly float* X;
    public readonly sbyte* Qs;
    public readonly float* D;
    public readonly float* S;
    public readonly short* BSums;

    public ActivationRow(float* x, sbyte* qs, float* d, float* s, short* bsums)
    {
        X = x;
        Qs = qs;
        D = d;
        S = s;
        BSums = bsums;
    }
}
