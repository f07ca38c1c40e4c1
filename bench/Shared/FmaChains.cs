using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Loom.Bench.Shared;

/// <summary>
/// The FP32 FMA peak loop both benchmark projects measure: ten independent FMA chains, enough to cover FMA latency
/// (4 cycles) × 2 pipes on Zen 3/4/5 and Intel cores. Linked into each project (not a library of its own).
/// </summary>
internal static class FmaChains
{
    public const int Chains = 10;

    /// <summary>Runs <paramref name="iterations"/> × <see cref="Chains"/> 256-bit FMAs; the result only keeps the loop alive.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Run256(int iterations)
    {
        var m = Vector256.Create(0.999999f);
        var d = Vector256.Create(1e-7f);
        Vector256<float> a0 = Vector256.Create(1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
        for (int i = 0; i < iterations; i++)
        {
            a0 = Vector256.FusedMultiplyAdd(a0, m, d); a1 = Vector256.FusedMultiplyAdd(a1, m, d); a2 = Vector256.FusedMultiplyAdd(a2, m, d);
            a3 = Vector256.FusedMultiplyAdd(a3, m, d); a4 = Vector256.FusedMultiplyAdd(a4, m, d); a5 = Vector256.FusedMultiplyAdd(a5, m, d);
            a6 = Vector256.FusedMultiplyAdd(a6, m, d); a7 = Vector256.FusedMultiplyAdd(a7, m, d); a8 = Vector256.FusedMultiplyAdd(a8, m, d);
            a9 = Vector256.FusedMultiplyAdd(a9, m, d);
        }
        return Vector256.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9);
    }

    /// <summary>The same with 512-bit vectors.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Run512(int iterations)
    {
        var m = Vector512.Create(0.999999f);
        var d = Vector512.Create(1e-7f);
        Vector512<float> a0 = Vector512.Create(1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
        for (int i = 0; i < iterations; i++)
        {
            a0 = Vector512.FusedMultiplyAdd(a0, m, d); a1 = Vector512.FusedMultiplyAdd(a1, m, d); a2 = Vector512.FusedMultiplyAdd(a2, m, d);
            a3 = Vector512.FusedMultiplyAdd(a3, m, d); a4 = Vector512.FusedMultiplyAdd(a4, m, d); a5 = Vector512.FusedMultiplyAdd(a5, m, d);
            a6 = Vector512.FusedMultiplyAdd(a6, m, d); a7 = Vector512.FusedMultiplyAdd(a7, m, d); a8 = Vector512.FusedMultiplyAdd(a8, m, d);
            a9 = Vector512.FusedMultiplyAdd(a9, m, d);
        }
        return Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9);
    }
}
