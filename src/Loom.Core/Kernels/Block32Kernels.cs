using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static Loom.Core.Kernels.SimdHelpers;

namespace Loom.Core.Kernels;

/// <summary>
/// Row · activation dots for the 32-element block types against Q8_0/Q8_1-quantized activations:
/// Σ_b d_w·d_x·(Σ q_w·q_x) (+ m_w·s_x for types with a min), integer inner sums as in llama.cpp.
/// </summary>
internal static unsafe class Block32Kernels
{
    public static float DotPortable<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format
    {
        sbyte* levels = stackalloc sbyte[32];
        float sum = 0, minSum = 0;
        sbyte* xq = x.Qs;
        for (int b = 0; b < blocks; b++, row += T.BlockBytes, xq += 32)
        {
            T.UnpackScalar(row, levels);
            int isum = 0;
            for (int j = 0; j < 32; j++) isum += levels[j] * xq[j];
            sum += T.Scale(row) * x.D[b] * isum;
            if (T.HasMin) minSum += T.Min(row) * x.S[b];
        }
        return sum + minSum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> BlockDot<T>(byte* block, sbyte* xq) where T : unmanaged, IBlock32Format
    {
        var w = T.Unpack(block);
        var xv = Vector256.Load(xq);
        return T.HasMin ? DotUnsignedSigned(w.AsByte(), xv) : DotSigned(w, xv);
    }

    public static float DotAvx2<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format
    {
        var acc = Vector256<float>.Zero;
        float minSum = 0;
        sbyte* xq = x.Qs;
        float* xd = x.D;
        for (int b = 0; b < blocks; b++, row += T.BlockBytes, xq += 32)
        {
            var p = Avx.ConvertToVector256Single(BlockDot<T>(row, xq));
            acc = Fma.MultiplyAdd(p, Vector256.Create(T.Scale(row) * xd[b]), acc);
            if (T.HasMin) minSum += T.Min(row) * x.S[b];
        }
        return Sum(acc) + minSum;
    }

    /// <summary>Two blocks per 512-bit register; an odd last block goes through the AVX2 step.</summary>
    public static float DotAvx512<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format
    {
        var acc = Vector512<float>.Zero;
        float minSum = 0;
        sbyte* xq = x.Qs;
        float* xd = x.D;
        int b = 0;
        for (; b + 1 < blocks; b += 2, row += 2 * T.BlockBytes, xq += 64)
        {
            var w = Vector512.Create(T.Unpack(row), T.Unpack(row + T.BlockBytes));
            var xv = Vector512.Load(xq);
            Vector512<short> pairs;
            if (T.HasMin)
            {
                pairs = Avx512BW.MultiplyAddAdjacent(w.AsByte(), xv);
            }
            else
            {
                // AVX-512 has no vpsignb: move w's sign onto x with a select (x is never -128).
                var signedX = Vector512.ConditionalSelect(Vector512.LessThan(w, Vector512<sbyte>.Zero), -xv, xv);
                pairs = Avx512BW.MultiplyAddAdjacent(Avx512BW.Abs(w), signedX);
            }
            var sums = Avx512BW.MultiplyAddAdjacent(pairs, Vector512.Create((short)1));
            var scale = Vector512.Create(Vector256.Create(T.Scale(row) * xd[b]), Vector256.Create(T.Scale(row + T.BlockBytes) * xd[b + 1]));
            acc = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(sums), scale, acc);
            if (T.HasMin) minSum += T.Min(row) * x.S[b] + T.Min(row + T.BlockBytes) * x.S[b + 1];
        }
        var tail = Vector256<float>.Zero;
        if (b < blocks)
        {
            var p = Avx.ConvertToVector256Single(BlockDot<T>(row, xq));
            tail = Vector256.Create(T.Scale(row) * xd[b]) * p;
            if (T.HasMin) minSum += T.Min(row) * x.S[b];
        }
        return Vector512.Sum(acc) + Sum(tail) + minSum;
    }
}
