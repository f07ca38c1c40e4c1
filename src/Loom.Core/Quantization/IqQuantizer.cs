namespace Loom.Core.Quantization;

/// <summary>
/// IQ4_NL / IQ4_XS reference quantizers (ggml's quantize_row_iq4_{nl,xs}_ref, no importance matrix): levels from the fixed
/// non-linear table, scale chosen by an x²-weighted least-squares search.
/// </summary>
public static unsafe partial class Quantizer
{
    /// <summary>Index of the table level nearest to <paramref name="x"/> (ties go up, as in ggml's best_index_int8).</summary>
    private static int NearestLevel(ReadOnlySpan<sbyte> values, float x)
    {
        if (x <= values[0]) return 0;
        if (x >= values[15]) return 15;
        int lo = 0, hi = 15;
        while (hi - lo > 1)
        {
            int mid = (lo + hi) / 2;
            if (x < values[mid]) hi = mid; else lo = mid;
        }
        return x - values[hi - 1] < values[hi] - x ? hi - 1 : hi;
    }

    /// <summary>
    /// One super-block of <paramref name="superBlockSize"/> elements in 32-element sub-blocks. With one sub-block (IQ4_NL) the
    /// sub-block scale is stored directly; with several (IQ4_XS) they are quantized to 6 bits against a shared fp16 scale.
    /// <paramref name="tries"/> is ggml's ntry (−1 for IQ4_NL's reference path, 7 for IQ4_XS). <paramref name="levels"/>
    /// persists across calls like ggml's stack buffer (a zero IQ4_NL block keeps the previous block's levels).
    /// </summary>
    private static void Iq4SuperBlock(int superBlockSize, float* x, byte* dh, byte* qs, byte* scalesH, byte* scalesL,
        byte* levels, float* scales, float* weight, int tries)
    {
        ReadOnlySpan<sbyte> values = Dequantizer.Iq4NlValues;
        const int blockSize = 32;
        new Span<byte>(qs, superBlockSize / 2).Clear();
        WriteHalf(dh, 0f);
        float maxScale = 0, amaxScale = 0;
        int subBlocks = superBlockSize / blockSize;
        for (int ib = 0; ib < subBlocks; ib++)
        {
            float* xb = x + ib * blockSize;
            byte* lb = levels + ib * blockSize;
            for (int j = 0; j < blockSize; j++) weight[j] = xb[j] * xb[j];
            float amax = 0, max = 0;
            for (int j = 0; j < blockSize; j++)
            {
                float ax = MathF.Abs(xb[j]);
                if (ax > amax) { amax = ax; max = xb[j]; }
            }
            if (amax < GroupMaxEps)
            {
                scales[ib] = 0;
                continue;
            }
            float d = tries > 0 ? -max / values[0] : max / values[0];
            float id = 1 / d;
            float sumqx = 0, sumq2 = 0;
            for (int j = 0; j < blockSize; j++)
            {
                int l = NearestLevel(values, id * xb[j]);
                lb[j] = (byte)l;
                float q = values[l];
                float w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            d = sumqx / sumq2;
            float best = d * sumqx;
            for (int attempt = -tries; attempt <= tries; attempt++)
            {
                id = (attempt + values[0]) / max;
                sumqx = sumq2 = 0;
                for (int j = 0; j < blockSize; j++)
                {
                    float q = values[NearestLevel(values, id * xb[j])];
                    float w = weight[j];
                    sumqx += w * q * xb[j];
                    sumq2 += w * q * q;
                }
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2)
                {
                    d = sumqx / sumq2;
                    best = d * sumqx;
                }
            }
            scales[ib] = d;
            float absD = MathF.Abs(d);
            if (absD > amaxScale) { amaxScale = absD; maxScale = d; }
        }

        if (subBlocks > 1)
        {
            new Span<byte>(scalesH, 2 * ((subBlocks + 7) / 8)).Clear();
            float d = -maxScale / 32;
            WriteHalf(dh, d);
            float id = d != 0 ? 1 / d : 0f;
            for (int ib = 0; ib < subBlocks; ib++)
            {
                int l = Math.Clamp(NearestInt(id * scales[ib]), -32, 31);
                float dl = d * l;
                float idl = dl != 0 ? 1 / dl : 0f;
                for (int j = 0; j < blockSize; j++)
                    levels[ib * blockSize + j] = (byte)NearestLevel(values, idl * x[ib * blockSize + j]);
                l += 32;
                int low = l & 0x0F, high = l >> 4;
                if (ib % 2 == 0) scalesL[ib / 2] = (byte)low;
                else scalesL[ib / 2] |= (byte)(low << 4);
                ((ushort*)scalesH)[ib / 8] |= (ushort)(high << (2 * (ib % 8)));
            }
        }
        else
        {
            WriteHalf(dh, scales[0]);
            if (tries > 0)
            {
                float id = scales[0] != 0 ? 1 / scales[0] : 0;
                for (int j = 0; j < superBlockSize; j++) levels[j] = (byte)NearestLevel(values, id * x[j]);
            }
        }

        for (int i = 0; i < superBlockSize / 32; i++)
            for (int j = 0; j < 16; j++)
                qs[16 * i + j] = (byte)(levels[32 * i + j] | (levels[32 * i + 16 + j] << 4));
    }

    private static void Iq4Nl(float* x, byte* y, int blocks)
    {
        byte* levels = stackalloc byte[32];
        new Span<byte>(levels, 32).Clear();
        float* weight = stackalloc float[32];
        float scale;
        ushort unusedH;
        for (int i = 0; i < blocks; i++, x += 32, y += 18)
            Iq4SuperBlock(32, x, y, y + 2, (byte*)&unusedH, null, levels, &scale, weight, -1);
    }

    private static void Iq4Xs(float* x, byte* y, int blocks)
    {
        byte* levels = stackalloc byte[256];
        float* weight = stackalloc float[32];
        float* scales = stackalloc float[8];
        for (int i = 0; i < blocks; i++, x += 256, y += 136)
            Iq4SuperBlock(256, x, y, y + 8, y + 2, y + 4, levels, scales, weight, 7);
    }
}
