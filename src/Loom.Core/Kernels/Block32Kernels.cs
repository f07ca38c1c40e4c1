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

    // ---- four tokens per pass: each weight block is unpacked once and dotted with four activation rows ----

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<T>(Vector256<byte> magnitudes, Vector256<sbyte> w, sbyte* xq, float scale, Vector256<float> acc)
        where T : unmanaged, IBlock32Format
    {
        var xv = Vector256.Load(xq);
        var p = DotUnsignedSigned(magnitudes, T.HasMin ? xv : Avx2.Sign(xv, w));
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(p), Vector256.Create(scale), acc);
    }

    public static void Dot4Avx2<T>(byte* row, int blocks, ActivationRow* x, float* result) where T : unmanaged, IBlock32Format
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        float m0 = 0, m1 = 0, m2 = 0, m3 = 0;
        for (int b = 0; b < blocks; b++, row += T.BlockBytes)
        {
            var w = T.Unpack(row);
            var magnitudes = T.HasMin ? w.AsByte() : Avx2.Abs(w);
            float dw = T.Scale(row);
            int o = 32 * b;
            a0 = Step<T>(magnitudes, w, x[0].Qs + o, dw * x[0].D[b], a0);
            a1 = Step<T>(magnitudes, w, x[1].Qs + o, dw * x[1].D[b], a1);
            a2 = Step<T>(magnitudes, w, x[2].Qs + o, dw * x[2].D[b], a2);
            a3 = Step<T>(magnitudes, w, x[3].Qs + o, dw * x[3].D[b], a3);
            if (T.HasMin)
            {
                float mw = T.Min(row);
                m0 += mw * x[0].S[b];
                m1 += mw * x[1].S[b];
                m2 += mw * x[2].S[b];
                m3 += mw * x[3].S[b];
            }
        }
        result[0] = Sum(a0) + m0;
        result[1] = Sum(a1) + m1;
        result[2] = Sum(a2) + m2;
        result[3] = Sum(a3) + m3;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Step512<T>(Vector512<byte> magnitudes, Vector512<sbyte> w, sbyte* xq, Vector512<float> scale, Vector512<float> acc)
        where T : unmanaged, IBlock32Format
    {
        var xv = Vector512.Load(xq);
        var signedX = T.HasMin ? xv : Vector512.ConditionalSelect(Vector512.LessThan(w, Vector512<sbyte>.Zero), -xv, xv);
        var sums = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(magnitudes, signedX), Vector512.Create((short)1));
        return Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(sums), scale, acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> PairScale(float dw0, float dw1, float* xd, int b) =>
        Vector512.Create(Vector256.Create(dw0 * xd[b]), Vector256.Create(dw1 * xd[b + 1]));

    public static void Dot4Avx512<T>(byte* row, int blocks, ActivationRow* x, float* result) where T : unmanaged, IBlock32Format
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        float m0 = 0, m1 = 0, m2 = 0, m3 = 0;
        int b = 0;
        for (; b + 1 < blocks; b += 2, row += 2 * T.BlockBytes)
        {
            var w = Vector512.Create(T.Unpack(row), T.Unpack(row + T.BlockBytes));
            var magnitudes = T.HasMin ? w.AsByte() : Avx512BW.Abs(w);
            float dw0 = T.Scale(row), dw1 = T.Scale(row + T.BlockBytes);
            int o = 32 * b;
            a0 = Step512<T>(magnitudes, w, x[0].Qs + o, PairScale(dw0, dw1, x[0].D, b), a0);
            a1 = Step512<T>(magnitudes, w, x[1].Qs + o, PairScale(dw0, dw1, x[1].D, b), a1);
            a2 = Step512<T>(magnitudes, w, x[2].Qs + o, PairScale(dw0, dw1, x[2].D, b), a2);
            a3 = Step512<T>(magnitudes, w, x[3].Qs + o, PairScale(dw0, dw1, x[3].D, b), a3);
            if (T.HasMin)
            {
                float mw0 = T.Min(row), mw1 = T.Min(row + T.BlockBytes);
                m0 += mw0 * x[0].S[b] + mw1 * x[0].S[b + 1];
                m1 += mw0 * x[1].S[b] + mw1 * x[1].S[b + 1];
                m2 += mw0 * x[2].S[b] + mw1 * x[2].S[b + 1];
                m3 += mw0 * x[3].S[b] + mw1 * x[3].S[b + 1];
            }
        }
        result[0] = Vector512.Sum(a0) + m0;
        result[1] = Vector512.Sum(a1) + m1;
        result[2] = Vector512.Sum(a2) + m2;
        result[3] = Vector512.Sum(a3) + m3;
        if (b < blocks)
        {
            var w = T.Unpack(row);
            var magnitudes = T.HasMin ? w.AsByte() : Avx2.Abs(w);
            float dw = T.Scale(row);
            float mw = T.HasMin ? T.Min(row) : 0;
            for (int t = 0; t < 4; t++)
            {
                result[t] += Sum(Step<T>(magnitudes, w, x[t].Qs + 32 * b, dw * x[t].D[b], Vector256<float>.Zero));
                if (T.HasMin) result[t] += mw * x[t].S[b];
            }
        }
    }
}
