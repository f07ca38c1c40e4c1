using System.Runtime.CompilerServices;
using Loom.Core.Quantization;

namespace Loom.Core.Kernels;

/// <summary>
/// Quantizes activation rows the way llama.cpp does before an integer dot product, into structure-of-arrays buffers:
/// 32-element blocks (ggml's Q8_0/Q8_1: fp16-rounded scale d = amax/127, plus s = d·Σq for the types with a min)
/// or 256-element blocks (ggml's Q8_K: float d, signed scale taken from the largest-magnitude element, sums of 16).
/// </summary>
internal static unsafe class ActivationQuantizer
{
    /// <summary>Q8_0/Q8_1 style: qs[n], d[n/32], s[n/32]. Rounding to nearest even (as ggml's SIMD quantize_row_q8_0 rounds).</summary>
    public static void QuantizeQ8Blocks32(float* x, int n, sbyte* qs, float* d, float* s)
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
            s[b] = Fp.RoundToHalf(sum * scale);
        }
    }

    /// <summary>Q8_K style: qs[n], d[n/256], bsums[n/16], bit for bit like ggml's quantize_row_q8_K_ref.</summary>
    public static void QuantizeQ8K(float* x, int n, sbyte* qs, float* d, short* bsums)
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
}
