using System.Runtime.CompilerServices;

namespace Loom.Core.Quantization;

/// <summary>
/// K-quant reference quantizers (ggml's quantize_row_q{2..6}_K_ref, no importance matrix). Every float expression keeps
/// ggml's operand order, since the scale searches compare errors and a different rounding can pick different levels.
/// </summary>
public static unsafe partial class Quantizer
{
    private const float GroupMaxEps = 1e-15f;

    /// <summary>ggml's nearest_int: round half to even (exact for the magnitudes used here).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int NearestInt(float v) => (int)MathF.Round(v);

    /// <summary>Symmetric levels in [-nmax, nmax-1] (stored +nmax) with an x²-weighted search over 19 nearby scales.</summary>
    private static float SymmetricScaleSearch(int n, int nmax, float* x, sbyte* levels)
    {
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GroupMaxEps)
        {
            for (int i = 0; i < n; i++) levels[i] = 0;
            return 0;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
            levels[i] = (sbyte)(l + nmax);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0;
        float best = scale * sumlx;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = -(nmax + 0.1f * step) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
                float w = x[i] * x[i];
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < n; i++)
                    levels[i] = (sbyte)(nmax + Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1));
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }

    /// <summary>Q3_K's sub-block search: symmetric levels, then up to five rounds of moving single levels while the x⁴-weighted fit improves.</summary>
    private static float Q3ScaleSearch(int n, int nmax, float* x, sbyte* levels)
    {
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GroupMaxEps)
        {
            for (int i = 0; i < n; i++) levels[i] = 0;
            return 0;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = Math.Clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
            levels[i] = (sbyte)l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int attempt = 0; attempt < 5; attempt++)
        {
            int changed = 0;
            for (int i = 0; i < n; i++)
            {
                float w = x[i] * x[i];
                float slx = sumlx - w * x[i] * levels[i];
                if (slx > 0)
                {
                    float sl2 = suml2 - w * levels[i] * levels[i];
                    int candidate = Math.Clamp(NearestInt(x[i] * sl2 / slx), -nmax, nmax - 1);
                    if (candidate != levels[i])
                    {
                        slx += w * x[i] * candidate;
                        sl2 += w * candidate * candidate;
                        if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2)
                        {
                            levels[i] = (sbyte)candidate;
                            sumlx = slx;
                            suml2 = sl2;
                            changed++;
                        }
                    }
                }
            }
            if (changed == 0) break;
        }
        for (int i = 0; i < n; i++) levels[i] += (sbyte)nmax;
        return suml2 > 0 ? sumlx / suml2 : 0;
    }

    /// <summary>
    /// Asymmetric levels in [0, nmax] with a min: tries nstep+1 scales around nmax/(max−min), each refit by weighted least squares,
    /// keeping the one with the smallest weighted error (absolute when <paramref name="useMad"/>, else squared).
    /// Returns the scale; <paramref name="negMin"/> receives −min (≥ 0).
    /// </summary>
    private static float AsymmetricScaleSearch(int n, int nmax, float* x, float* weights, byte* levels, out float negMin,
        byte* scratch, float rmin, float rdelta, int nstep, bool useMad)
    {
        float min = x[0], max = x[0];
        float sumW = weights[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = weights[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max == min)
        {
            for (int i = 0; i < n; i++) levels[i] = 0;
            negMin = -min;
            return 0;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * (x[i] - min));
            levels[i] = (byte)Math.Clamp(l, 0, nmax);
            float diff = scale * levels[i] + min - x[i];
            diff = useMad ? MathF.Abs(diff) : diff * diff;
            bestError += weights[i] * diff;
        }
        for (int step = 0; step <= nstep; step++)
        {
            iscale = (rmin + rdelta * step + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; i++)
            {
                int l = Math.Clamp(NearestInt(iscale * (x[i] - min)), 0, nmax);
                scratch[i] = (byte)l;
                float w = weights[i];
                sumL += w * l;
                sumL2 += w * l * l;
                sumXL += w * l * x[i];
            }
            float det = sumW * sumL2 - sumL * sumL;
            if (det > 0)
            {
                float thisScale = (sumW * sumXL - sumX * sumL) / det;
                float thisMin = (sumL2 * sumX - sumL * sumXL) / det;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sumXL / sumL2;
                }
                float error = 0;
                for (int i = 0; i < n; i++)
                {
                    float diff = thisScale * scratch[i] + thisMin - x[i];
                    diff = useMad ? MathF.Abs(diff) : diff * diff;
                    error += weights[i] * diff;
                }
                if (error < bestError)
                {
                    for (int i = 0; i < n; i++) levels[i] = scratch[i];
                    bestError = error;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        negMin = -min;
        return scale;
    }

    /// <summary>Packs 2-bit levels: byte l of each 32-byte group holds elements l, l+32, l+64, l+96 of its 128.</summary>
    private static void Pack2Bit(byte* levels, byte* qs)
    {
        for (int j = 0; j < 256; j += 128)
            for (int l = 0; l < 32; l++)
                qs[j / 4 + l] = (byte)(levels[j + l] | (levels[j + l + 32] << 2) | (levels[j + l + 64] << 4) | (levels[j + l + 96] << 6));
    }

    private static void Q2_K(float* x, byte* y, int blocks)
    {
        byte* levels = stackalloc byte[256];
        byte* scratch = stackalloc byte[16];
        float* weights = stackalloc float[16];
        float* mins = stackalloc float[16];
        float* scales = stackalloc float[16];
        const float q4scale = 15f;
        for (int i = 0; i < blocks; i++, x += 256, y += 84)
        {
            float maxScale = 0, maxMin = 0;
            for (int j = 0; j < 16; j++)
            {
                for (int l = 0; l < 16; l++) weights[l] = MathF.Abs(x[16 * j + l]);
                scales[j] = AsymmetricScaleSearch(16, 3, x + 16 * j, weights, levels + 16 * j, out mins[j], scratch, -0.5f, 0.1f, 15, true);
                if (scales[j] > maxScale) maxScale = scales[j];
                if (mins[j] > maxMin) maxMin = mins[j];
            }
            byte* packedScales = y;
            if (maxScale > 0)
            {
                float iscale = q4scale / maxScale;
                for (int j = 0; j < 16; j++) packedScales[j] = (byte)NearestInt(iscale * scales[j]);
                WriteHalf(y + 80, maxScale / q4scale);
            }
            else
            {
                for (int j = 0; j < 16; j++) packedScales[j] = 0;
                WriteHalf(y + 80, 0f);
            }
            if (maxMin > 0)
            {
                float iscale = q4scale / maxMin;
                for (int j = 0; j < 16; j++) packedScales[j] |= (byte)(NearestInt(iscale * mins[j]) << 4);
                WriteHalf(y + 82, maxMin / q4scale);
            }
            else
            {
                WriteHalf(y + 82, 0f);
            }
            float dAll = Fp.ReadHalf(y + 80), minAll = Fp.ReadHalf(y + 82);
            for (int j = 0; j < 16; j++)
            {
                float d = dAll * (packedScales[j] & 0x0F);
                if (d == 0) continue;
                float dm = minAll * (packedScales[j] >> 4);
                for (int ii = 0; ii < 16; ii++)
                    levels[16 * j + ii] = (byte)Math.Clamp(NearestInt((x[16 * j + ii] + dm) / d), 0, 3);
            }
            Pack2Bit(levels, y + 16);
        }
    }

    private static void Q3_K(float* x, byte* y, int blocks)
    {
        sbyte* levels = stackalloc sbyte[256];
        float* scales = stackalloc float[16];
        for (int i = 0; i < blocks; i++, x += 256, y += 110)
        {
            float maxScale = 0, amax = 0;
            for (int j = 0; j < 16; j++)
            {
                scales[j] = Q3ScaleSearch(16, 4, x + 16 * j, levels + 16 * j);
                float a = MathF.Abs(scales[j]);
                if (a > amax) { amax = a; maxScale = scales[j]; }
            }
            byte* packed = y + 96;
            new Span<byte>(packed, 12).Clear();
            if (maxScale != 0)
            {
                float iscale = -32f / maxScale;
                for (int j = 0; j < 16; j++)
                {
                    int l = Math.Clamp((int)(sbyte)NearestInt(iscale * scales[j]), -32, 31) + 32;
                    if (j < 8) packed[j] = (byte)(l & 0x0F);
                    else packed[j - 8] |= (byte)((l & 0x0F) << 4);
                    packed[j % 4 + 8] |= (byte)((l >> 4) << (2 * (j / 4)));
                }
                WriteHalf(y + 108, 1 / iscale);
            }
            else
            {
                WriteHalf(y + 108, 0f);
            }
            float dAll = Fp.ReadHalf(y + 108);
            for (int j = 0; j < 16; j++)
            {
                int sc = j < 8 ? packed[j] & 0x0F : packed[j - 8] >> 4;
                sc = (sbyte)((sc | (((packed[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
                float d = dAll * sc;
                if (d == 0) continue;
                for (int ii = 0; ii < 16; ii++)
                    levels[16 * j + ii] = (sbyte)(Math.Clamp(NearestInt(x[16 * j + ii] / d), -4, 3) + 4);
            }
            // high bit of element j goes to hmask[j % 32], bit j / 32; the low two bits are packed like Q2_K's.
            byte* hmask = y;
            new Span<byte>(hmask, 32).Clear();
            for (int j = 0; j < 256; j++)
            {
                if (levels[j] > 3)
                {
                    hmask[j % 32] |= (byte)(1 << (j / 32));
                    levels[j] -= 4;
                }
            }
            Pack2Bit((byte*)levels, y + 32);
        }
    }

    /// <summary>Shared by Q4_K and Q5_K: eight 32-element sub-blocks with 6-bit scales and mins, levels in [0, nmax].</summary>
    private static void ScaleMinSuperBlock(float* x, byte* y, byte* levels, int nmax, float rmin, int nstep)
    {
        byte* scratch = stackalloc byte[32];
        float* weights = stackalloc float[32];
        float* mins = stackalloc float[8];
        float* scales = stackalloc float[8];
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 8; j++)
        {
            float sumX2 = 0;
            for (int l = 0; l < 32; l++) sumX2 += x[32 * j + l] * x[32 * j + l];
            float avX = MathF.Sqrt(sumX2 / 32);
            for (int l = 0; l < 32; l++) weights[l] = avX + MathF.Abs(x[32 * j + l]);
            scales[j] = AsymmetricScaleSearch(32, nmax, x + 32 * j, weights, levels + 32 * j, out mins[j], scratch, rmin, 0.1f, nstep, false);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        float invScale = maxScale > 0 ? 63f / maxScale : 0f;
        float invMin = maxMin > 0 ? 63f / maxMin : 0f;
        byte* packed = y + 4;
        for (int j = 0; j < 8; j++)
        {
            int ls = Math.Min(63, (int)(byte)NearestInt(invScale * scales[j]));
            int lm = Math.Min(63, (int)(byte)NearestInt(invMin * mins[j]));
            if (j < 4)
            {
                packed[j] = (byte)ls;
                packed[j + 4] = (byte)lm;
            }
            else
            {
                packed[j + 4] = (byte)((ls & 0x0F) | ((lm & 0x0F) << 4));
                packed[j - 4] |= (byte)((ls >> 4) << 6);
                packed[j] |= (byte)((lm >> 4) << 6);
            }
        }
        WriteHalf(y, maxScale / 63f);
        WriteHalf(y + 2, maxMin / 63f);
        float dAll = Fp.ReadHalf(y), minAll = Fp.ReadHalf(y + 2);
        for (int j = 0; j < 8; j++)
        {
            Dequantizer.ScaleMinK4(j, packed, out int sc, out int m);
            float d = dAll * sc;
            if (d == 0) continue;
            float dm = minAll * m;
            for (int ii = 0; ii < 32; ii++)
                levels[32 * j + ii] = (byte)Math.Clamp(NearestInt((x[32 * j + ii] + dm) / d), 0, nmax);
        }
    }

    private static void Q4_K(float* x, byte* y, int blocks)
    {
        byte* levels = stackalloc byte[256];
        for (int i = 0; i < blocks; i++, x += 256, y += 144)
        {
            ScaleMinSuperBlock(x, y, levels, 15, -1f, 20);
            byte* q = y + 16;
            for (int j = 0; j < 256; j += 64, q += 32)
                for (int l = 0; l < 32; l++) q[l] = (byte)(levels[j + l] | (levels[j + l + 32] << 4));
        }
    }

    private static void Q5_K(float* x, byte* y, int blocks)
    {
        byte* levels = stackalloc byte[256];
        for (int i = 0; i < blocks; i++, x += 256, y += 176)
        {
            ScaleMinSuperBlock(x, y, levels, 31, -0.5f, 15);
            byte* qh = y + 16;
            byte* ql = y + 48;
            new Span<byte>(qh, 32).Clear();
            int m1 = 1, m2 = 2;
            for (int n = 0; n < 256; n += 64, ql += 32, m1 <<= 2, m2 <<= 2)
            {
                for (int j = 0; j < 32; j++)
                {
                    int l1 = levels[n + j], l2 = levels[n + j + 32];
                    if (l1 > 15) { l1 -= 16; qh[j] |= (byte)m1; }
                    if (l2 > 15) { l2 -= 16; qh[j] |= (byte)m2; }
                    ql[j] = (byte)(l1 | (l2 << 4));
                }
            }
        }
    }

    private static void Q6_K(float* x, byte* y, int blocks)
    {
        sbyte* levels = stackalloc sbyte[256];
        float* scales = stackalloc float[16];
        for (int i = 0; i < blocks; i++, x += 256, y += 210)
        {
            float maxScale = 0, maxAbsScale = 0;
            for (int ib = 0; ib < 16; ib++)
            {
                scales[ib] = SymmetricScaleSearch(16, 32, x + 16 * ib, levels + 16 * ib);
                float a = MathF.Abs(scales[ib]);
                if (a > maxAbsScale) { maxAbsScale = a; maxScale = scales[ib]; }
            }
            if (maxAbsScale < GroupMaxEps)
            {
                new Span<byte>(y, 210).Clear();
                continue;
            }
            float iscale = -128f / maxScale;
            WriteHalf(y + 208, 1 / iscale);
            var sc = (sbyte*)(y + 192);
            for (int ib = 0; ib < 16; ib++) sc[ib] = (sbyte)Math.Min(127, NearestInt(iscale * scales[ib]));
            float dAll = Fp.ReadHalf(y + 208);
            for (int j = 0; j < 16; j++)
            {
                float d = dAll * sc[j];
                if (d == 0) continue;
                for (int ii = 0; ii < 16; ii++)
                    levels[16 * j + ii] = (sbyte)(Math.Clamp(NearestInt(x[16 * j + ii] / d), -32, 31) + 32);
            }
            byte* ql = y;
            byte* qh = y + 128;
            for (int j = 0; j < 256; j += 128, ql += 64, qh += 32)
            {
                for (int l = 0; l < 32; l++)
                {
                    int q1 = levels[j + l], q2 = levels[j + l + 32], q3 = levels[j + l + 64], q4 = levels[j + l + 96];
                    ql[l] = (byte)((q1 & 0x0F) | ((q3 & 0x0F) << 4));
                    ql[l + 32] = (byte)((q2 & 0x0F) | ((q4 & 0x0F) << 4));
                    qh[l] = (byte)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
                }
            }
        }
    }
}
