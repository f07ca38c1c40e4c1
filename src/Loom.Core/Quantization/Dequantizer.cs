using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace Loom.Core.Quantization;

/// <summary>
/// Turns ggml blocks back into floats, bit for bit as ggml's dequantize_row_* does
/// (same integer unpacking, same float operation order, separate multiply and add as in ggml's portable C).
/// </summary>
public static unsafe class Dequantizer
{
    /// <summary>The 16 non-linear levels shared by IQ4_NL and IQ4_XS.</summary>
    internal static ReadOnlySpan<sbyte> Iq4NlValues => [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

    public static bool IsSupported(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0
        or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K
        or GgmlType.IQ4_NL or GgmlType.IQ4_XS;

    /// <summary>Decodes <c>destination.Length</c> elements (a whole number of blocks) from <paramref name="blocks"/>.</summary>
    public static void Dequantize(GgmlType type, ReadOnlySpan<byte> blocks, Span<float> destination)
    {
        if (!IsSupported(type))
            throw new NotSupportedException($"dequantizing {GgmlTypeInfo.Name(type)} is not supported");
        long need = GgmlTypeInfo.RowBytes(type, destination.Length);
        if (blocks.Length < need)
            throw new ArgumentException($"{destination.Length} {type} elements need {need} bytes but only {blocks.Length} were given", nameof(blocks));
        fixed (byte* src = blocks)
        fixed (float* dst = destination)
            DequantizeUnchecked(type, src, dst, destination.Length);
    }

    /// <summary>Pointer form for callers that validated sizes already; <paramref name="count"/> is a whole number of blocks.</summary>
    internal static void DequantizeUnchecked(GgmlType type, byte* src, float* dst, int count)
    {
        switch (type)
        {
            case GgmlType.F32: new ReadOnlySpan<float>(src, count).CopyTo(new Span<float>(dst, count)); break;
            case GgmlType.F16: TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(src, count), new Span<float>(dst, count)); break;
            case GgmlType.BF16: BFloat16(src, dst, count); break;
            case GgmlType.Q4_0: Q4_0(src, dst, count / 32); break;
            case GgmlType.Q4_1: Q4_1(src, dst, count / 32); break;
            case GgmlType.Q5_0: Q5_0(src, dst, count / 32); break;
            case GgmlType.Q5_1: Q5_1(src, dst, count / 32); break;
            case GgmlType.Q8_0: Q8_0(src, dst, count / 32); break;
            case GgmlType.IQ4_NL: Iq4Nl(src, dst, count / 32); break;
            case GgmlType.Q2_K: Q2_K(src, dst, count / 256); break;
            case GgmlType.Q3_K: Q3_K(src, dst, count / 256); break;
            case GgmlType.Q4_K: Q4_K(src, dst, count / 256); break;
            case GgmlType.Q5_K: Q5_K(src, dst, count / 256); break;
            case GgmlType.Q6_K: Q6_K(src, dst, count / 256); break;
            case GgmlType.IQ4_XS: Iq4Xs(src, dst, count / 256); break;
            default: throw new NotSupportedException($"dequantizing {GgmlTypeInfo.Name(type)} is not supported");
        }
    }

    private static void BFloat16(byte* src, float* dst, int count)
    {
        var s = (ushort*)src;
        for (int i = 0; i < count; i++) dst[i] = Fp.BFloat16ToFloat(s[i]);
    }

    // Q4_0: fp16 d, 16 bytes of nibbles; low nibbles are elements 0..15, high nibbles 16..31.
    private static void Q4_0(byte* x, float* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 18, y += 32)
        {
            float d = Fp.ReadHalf(x);
            byte* qs = x + 2;
            for (int j = 0; j < 16; j++)
            {
                y[j] = ((qs[j] & 0x0F) - 8) * d;
                y[j + 16] = ((qs[j] >> 4) - 8) * d;
            }
        }
    }

    private static void Q4_1(byte* x, float* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 20, y += 32)
        {
            float d = Fp.ReadHalf(x), m = Fp.ReadHalf(x + 2);
            byte* qs = x + 4;
            for (int j = 0; j < 16; j++)
            {
                y[j] = (qs[j] & 0x0F) * d + m;
                y[j + 16] = (qs[j] >> 4) * d + m;
            }
        }
    }

    // Q5_0: fp16 d, 32 high bits (little-endian u32), 16 bytes of nibbles.
    private static void Q5_0(byte* x, float* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 22, y += 32)
        {
            float d = Fp.ReadHalf(x);
            uint qh = Unsafe.ReadUnaligned<uint>(x + 2);
            byte* qs = x + 6;
            for (int j = 0; j < 16; j++)
            {
                int h0 = (int)(((qh >> j) << 4) & 0x10);
                int h1 = (int)((qh >> (j + 12)) & 0x10);
                y[j] = (((qs[j] & 0x0F) | h0) - 16) * d;
                y[j + 16] = (((qs[j] >> 4) | h1) - 16) * d;
            }
        }
    }

    private static void Q5_1(byte* x, float* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 24, y += 32)
        {
            float d = Fp.ReadHalf(x), m = Fp.ReadHalf(x + 2);
            uint qh = Unsafe.ReadUnaligned<uint>(x + 4);
            byte* qs = x + 8;
            for (int j = 0; j < 16; j++)
            {
                int h0 = (int)(((qh >> j) << 4) & 0x10);
                int h1 = (int)((qh >> (j + 12)) & 0x10);
                y[j] = ((qs[j] & 0x0F) | h0) * d + m;
                y[j + 16] = ((qs[j] >> 4) | h1) * d + m;
            }
        }
    }

    private static void Q8_0(byte* x, float* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 34, y += 32)
        {
            float d = Fp.ReadHalf(x);
            var qs = (sbyte*)(x + 2);
            for (int j = 0; j < 32; j++) y[j] = qs[j] * d;
        }
    }

    private static void Iq4Nl(byte* x, float* y, int blocks)
    {
        ReadOnlySpan<sbyte> values = Iq4NlValues;
        for (int i = 0; i < blocks; i++, x += 18, y += 32)
        {
            float d = Fp.ReadHalf(x);
            byte* qs = x + 2;
            for (int j = 0; j < 16; j++)
            {
                y[j] = d * values[qs[j] & 0x0F];
                y[j + 16] = d * values[qs[j] >> 4];
            }
        }
    }

    // Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2-bit), fp16 d, fp16 dmin.
    private static void Q2_K(byte* x, float* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 84)
        {
            byte* scales = x;
            byte* q = x + 16;
            float d = Fp.ReadHalf(x + 80), min = Fp.ReadHalf(x + 82);
            int s = 0;
            for (int n = 0; n < 256; n += 128, q += 32)
            {
                for (int shift = 0; shift < 8; shift += 2)
                {
                    for (int half = 0; half < 32; half += 16)
                    {
                        int sc = scales[s++];
                        float dl = d * (sc & 0x0F), ml = min * (sc >> 4);
                        for (int l = 0; l < 16; l++) *y++ = dl * ((q[half + l] >> shift) & 3) - ml;
                    }
                }
            }
        }
    }

    /// <summary>Unpacks Q3_K's twelve bytes into sixteen 6-bit scales, already offset by -32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void UnpackQ3KScales(byte* packed, sbyte* scales)
    {
        const uint kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
        uint a0 = Unsafe.ReadUnaligned<uint>(packed), a1 = Unsafe.ReadUnaligned<uint>(packed + 4), tmp = Unsafe.ReadUnaligned<uint>(packed + 8);
        var aux = (uint*)scales;
        aux[0] = (a0 & kmask2) | (((tmp >> 0) & kmask1) << 4);
        aux[1] = (a1 & kmask2) | (((tmp >> 2) & kmask1) << 4);
        aux[2] = ((a0 >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
        aux[3] = ((a1 >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
        for (int k = 0; k < 16; k++) scales[k] -= 32;
    }

    // Q3_K: hmask[32], qs[64], scales[12] (6-bit, packed), fp16 d. A clear high bit means "subtract 4".
    private static void Q3_K(byte* x, float* y, int blocks)
    {
        sbyte* scales = stackalloc sbyte[16];
        for (int i = 0; i < blocks; i++, x += 110)
        {
            byte* hm = x;
            byte* q = x + 32;
            UnpackQ3KScales(x + 96, scales);
            float dAll = Fp.ReadHalf(x + 108);
            int s = 0;
            int m = 1;
            for (int n = 0; n < 256; n += 128, q += 32)
            {
                for (int shift = 0; shift < 8; shift += 2, m <<= 1)
                {
                    for (int half = 0; half < 32; half += 16)
                    {
                        float dl = dAll * scales[s++];
                        for (int l = 0; l < 16; l++)
                            *y++ = dl * (((q[half + l] >> shift) & 3) - ((hm[half + l] & m) != 0 ? 0 : 4));
                    }
                }
            }
        }
    }

    /// <summary>Scale and min of sub-block <paramref name="j"/> (0..7) from the 12 packed bytes used by Q4_K and Q5_K.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ScaleMinK4(int j, byte* q, out int scale, out int min)
    {
        if (j < 4)
        {
            scale = q[j] & 63;
            min = q[j + 4] & 63;
        }
        else
        {
            scale = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
            min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }

    // Q4_K: fp16 d, fp16 dmin, scales[12], qs[128]; 64 elements per 32 bytes (low nibbles then high nibbles).
    private static void Q4_K(byte* x, float* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 144)
        {
            float d = Fp.ReadHalf(x), min = Fp.ReadHalf(x + 2);
            byte* scales = x + 4;
            byte* q = x + 16;
            for (int j = 0, s = 0; j < 256; j += 64, s += 2, q += 32)
            {
                ScaleMinK4(s, scales, out int sc1, out int m1i);
                ScaleMinK4(s + 1, scales, out int sc2, out int m2i);
                float d1 = d * sc1, m1 = min * m1i, d2 = d * sc2, m2 = min * m2i;
                for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0x0F) - m1;
                for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
            }
        }
    }

    // Q5_K: fp16 d, fp16 dmin, scales[12], qh[32], qs[128].
    private static void Q5_K(byte* x, float* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 176)
        {
            float d = Fp.ReadHalf(x), min = Fp.ReadHalf(x + 2);
            byte* scales = x + 4;
            byte* qh = x + 16;
            byte* ql = x + 48;
            int u1 = 1, u2 = 2;
            for (int j = 0, s = 0; j < 256; j += 64, s += 2, ql += 32, u1 <<= 2, u2 <<= 2)
            {
                ScaleMinK4(s, scales, out int sc1, out int m1i);
                ScaleMinK4(s + 1, scales, out int sc2, out int m2i);
                float d1 = d * sc1, m1 = min * m1i, d2 = d * sc2, m2 = min * m2i;
                for (int l = 0; l < 32; l++) *y++ = d1 * ((ql[l] & 0x0F) + ((qh[l] & u1) != 0 ? 16 : 0)) - m1;
                for (int l = 0; l < 32; l++) *y++ = d2 * ((ql[l] >> 4) + ((qh[l] & u2) != 0 ? 16 : 0)) - m2;
            }
        }
    }

    // Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16], fp16 d.
    private static void Q6_K(byte* x, float* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 210)
        {
            byte* ql = x;
            byte* qh = x + 128;
            var sc = (sbyte*)(x + 192);
            float d = Fp.ReadHalf(x + 208);
            for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8)
            {
                for (int l = 0; l < 32; l++)
                {
                    int s = l / 16;
                    int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * sc[s] * q1;
                    y[l + 32] = d * sc[s + 2] * q2;
                    y[l + 64] = d * sc[s + 4] * q3;
                    y[l + 96] = d * sc[s + 6] * q4;
                }
            }
        }
    }

    // IQ4_XS: fp16 d, u16 scales_h, scales_l[4], qs[128]; eight 32-element sub-blocks with 6-bit scales.
    private static void Iq4Xs(byte* x, float* y, int blocks)
    {
        ReadOnlySpan<sbyte> values = Iq4NlValues;
        for (int i = 0; i < blocks; i++, x += 136)
        {
            float d = Fp.ReadHalf(x);
            int scalesH = Unsafe.ReadUnaligned<ushort>(x + 2);
            byte* scalesL = x + 4;
            byte* qs = x + 8;
            for (int ib = 0; ib < 8; ib++, qs += 16, y += 32)
            {
                int ls = ((scalesL[ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((scalesH >> (2 * ib)) & 3) << 4);
                float dl = d * (ls - 32);
                for (int j = 0; j < 16; j++)
                {
                    y[j] = dl * values[qs[j] & 0x0F];
                    y[j + 16] = dl * values[qs[j] >> 4];
                }
            }
        }
    }
}
