using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Loom.Core.Quantization;

namespace Loom.Core.Kernels;

/// <summary>
/// Quantizes activation rows the way llama.cpp does before an integer dot product, into structure-of-arrays buffers:
/// 32-element blocks (ggml's Q8_0/Q8_1: fp16-rounded scale d = amax/127, plus s = d·Σq for the types with a min:
/// rounded to fp16 as Q8_1 stores it for Q4_1/Q5_1, exact for Q4_0/Q5_0 whose m = −8d/−16d term must undo the offset exactly)
/// or 256-element blocks (ggml's Q8_K: float d, signed scale taken from the largest-magnitude element, sums of 16).
/// </summary>
internal static unsafe class ActivationQuantizer
{
    /// <summary>Q8_0/Q8_1 style: qs[n], d[n/32], s[n/32]. Rounding to nearest even (as ggml's SIMD quantize_row_q8_0 rounds).</summary>
    public static void QuantizeQ8Blocks32(float* x, int n, sbyte* qs, float* d, float* s, bool halfSums)
    {
        if (Avx2.IsSupported) QuantizeQ8Blocks32Avx2(x, n, qs, d, s, halfSums);
        else QuantizeQ8Blocks32Portable(x, n, qs, d, s, halfSums);
    }

    /// <summary>s: Q8_1's fp16(Σq·amax/127), or the exact Σq·d with d the block's stored (fp16-rounded) scale.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float BlockSum(int sum, float scale, bool halfSums) =>
        halfSums ? Fp.RoundToHalf(sum * scale) : sum * Fp.RoundToHalf(scale);

    /// <summary>Σq of each 32-level block (Q4_0's and Q5_0's kernels subtract 8·Σq or 16·Σq from a block's unsigned-level dot).</summary>
    public static void BlockSums32(sbyte* qs, int n, short* sums)
    {
        for (int b = 0; b < n / 32; b++, qs += 32)
        {
            if (Avx2.IsSupported)
            {
                // levels + 128 as unsigned bytes, summed in four groups of eight by psadbw
                var biased = Vector256.Load((byte*)qs) ^ Vector256.Create((byte)0x80);
                sums[b] = (short)((int)Vector256.Sum(Avx2.SumAbsoluteDifferences(biased, Vector256<byte>.Zero).AsUInt64()) - 32 * 128);
            }
            else
            {
                int sum = 0;
                for (int j = 0; j < 32; j++) sum += qs[j];
                sums[b] = (short)sum;
            }
        }
    }

    /// <summary>Q8_K style: qs[n], d[n/256], bsums[n/16], bit for bit like ggml's quantize_row_q8_K_ref.</summary>
    public static void QuantizeQ8K(float* x, int n, sbyte* qs, float* d, short* bsums)
    {
        if (Avx2.IsSupported) QuantizeQ8KAvx2(x, n, qs, d, bsums);
        else QuantizeQ8KPortable(x, n, qs, d, bsums);
    }

    internal static void QuantizeQ8Blocks32Portable(float* x, int n, sbyte* qs, float* d, float* s, bool halfSums)
    {
        for (int b = 0; b < n / 32; b++, x += 32, qs += 32)
        {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
            float scale = amax / 127f;
            float inverse = amax != 0 ? 127f / amax : 0f;
            int sum = 0;
            for (int j = 0; j < 32; j++)
            {
                int q = (int)MathF.Round(x[j] * inverse);
                qs[j] = (sbyte)q;
                sum += q;
            }
            d[b] = Fp.RoundToHalf(scale);
            s[b] = BlockSum(sum, scale, halfSums);
        }
    }

    internal static void QuantizeQ8KPortable(float* x, int n, sbyte* qs, float* d, short* bsums)
    {
        for (int b = 0; b < n / 256; b++, x += 256, qs += 256, bsums += 16)
        {
            float amax = 0, max = 0;
            for (int j = 0; j < 256; j++)
            {
                float a = MathF.Abs(x[j]);
                if (a > amax) { amax = a; max = x[j]; }
            }
            if (amax == 0)
            {
                d[b] = 0;
                new Span<sbyte>(qs, 256).Clear();
                new Span<short>(bsums, 16).Clear();
                continue;
            }
            float iscale = -127f / max;
            for (int j = 0; j < 256; j++)
                qs[j] = (sbyte)Math.Min(127, (int)MathF.Round(iscale * x[j]));
            for (int g = 0; g < 16; g++)
            {
                int sum = 0;
                for (int j = 0; j < 16; j++) sum += qs[g * 16 + j];
                bsums[g] = (short)sum;
            }
            d[b] = 1 / iscale;
        }
    }

    // ---- AVX2: same arithmetic (cvtps2dq rounds to nearest even like MathF.Round), eight lanes at a time ----

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Abs(Vector256<float> v) => Avx.AndNot(Vector256.Create(-0.0f), v);

    /// <summary>Narrows 32 int32 values (already within ±127) to bytes in element order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreBytes(Vector256<int> q0, Vector256<int> q1, Vector256<int> q2, Vector256<int> q3, sbyte* destination)
    {
        var words01 = Avx2.PackSignedSaturate(q0, q1);
        var words23 = Avx2.PackSignedSaturate(q2, q3);
        var bytes = Avx2.PackSignedSaturate(words01, words23);
        // the in-lane packs interleave 4-element groups; put them back in order
        Avx2.PermuteVar8x32(bytes.AsInt32(), Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7)).AsSByte().Store(destination);
    }

    internal static void QuantizeQ8Blocks32Avx2(float* x, int n, sbyte* qs, float* d, float* s, bool halfSums)
    {
        for (int b = 0; b < n / 32; b++, x += 32, qs += 32)
        {
            var v0 = Vector256.Load(x);
            var v1 = Vector256.Load(x + 8);
            var v2 = Vector256.Load(x + 16);
            var v3 = Vector256.Load(x + 24);
            var m = Avx.Max(Avx.Max(Abs(v0), Abs(v1)), Avx.Max(Abs(v2), Abs(v3)));
            var m4 = Sse.Max(m.GetLower(), m.GetUpper());
            m4 = Sse.Max(m4, Sse.MoveHighToLow(m4, m4));
            float amax = MathF.Max(m4.ToScalar(), m4.GetElement(1));
            float scale = amax / 127f;
            var inverse = Vector256.Create(amax != 0 ? 127f / amax : 0f);
            var q0 = Avx.ConvertToVector256Int32(v0 * inverse);
            var q1 = Avx.ConvertToVector256Int32(v1 * inverse);
            var q2 = Avx.ConvertToVector256Int32(v2 * inverse);
            var q3 = Avx.ConvertToVector256Int32(v3 * inverse);
            StoreBytes(q0, q1, q2, q3, qs);
            int sum = Vector256.Sum(q0 + q1 + q2 + q3);
            d[b] = Fp.RoundToHalf(scale);
            s[b] = BlockSum(sum, scale, halfSums);
        }
    }

    internal static void QuantizeQ8KAvx2(float* x, int n, sbyte* qs, float* d, short* bsums)
    {
        for (int b = 0; b < n / 256; b++, x += 256, qs += 256, bsums += 16)
        {
            var m = Vector256<float>.Zero;
            for (int j = 0; j < 256; j += 8) m = Avx.Max(m, Abs(Vector256.Load(x + j)));
            var m4 = Sse.Max(m.GetLower(), m.GetUpper());
            m4 = Sse.Max(m4, Sse.MoveHighToLow(m4, m4));
            float amax = MathF.Max(m4.ToScalar(), m4.GetElement(1));
            if (amax == 0)
            {
                d[b] = 0;
                new Span<sbyte>(qs, 256).Clear();
                new Span<short>(bsums, 16).Clear();
                continue;
            }
            // the scale's sign comes from the first element of largest magnitude, as in ggml's scan
            int at = 0;
            while (MathF.Abs(x[at]) != amax) at++;
            float iscale = -127f / x[at];
            var vscale = Vector256.Create(iscale);
            var limit = Vector256.Create(127);
            for (int g = 0; g < 16; g += 2)
            {
                float* xg = x + 16 * g;
                var q0 = Avx2.Min(Avx.ConvertToVector256Int32(Vector256.Load(xg) * vscale), limit);
                var q1 = Avx2.Min(Avx.ConvertToVector256Int32(Vector256.Load(xg + 8) * vscale), limit);
                var q2 = Avx2.Min(Avx.ConvertToVector256Int32(Vector256.Load(xg + 16) * vscale), limit);
                var q3 = Avx2.Min(Avx.ConvertToVector256Int32(Vector256.Load(xg + 24) * vscale), limit);
                StoreBytes(q0, q1, q2, q3, qs + 16 * g);
                bsums[g] = (short)Vector256.Sum(q0 + q1);
                bsums[g + 1] = (short)Vector256.Sum(q2 + q3);
            }
            d[b] = 1 / iscale;
        }
    }
}
