using System.Runtime.CompilerServices;

namespace Loom.Core.Quantization;

/// <summary>
/// Reference quantizers that produce the same bytes as ggml's quantize_row_*_ref
/// (same scale choice, same float operations, same rounding: roundf for Q8_0, truncating casts after +0.5/+8.5/+16.5 for the 4/5-bit types,
/// and for the K-quants the same iterative scale searches without an importance matrix).
/// </summary>
public static unsafe partial class Quantizer
{
    /// <summary>Every type Loom decodes it can also encode.</summary>
    public static bool IsSupported(GgmlType type) => Dequantizer.IsSupported(type);

    /// <summary>Encodes <paramref name="source"/> (a whole number of blocks) into <paramref name="destination"/>; returns the bytes written.</summary>
    public static int Quantize(GgmlType type, ReadOnlySpan<float> source, Span<byte> destination)
    {
        if (!IsSupported(type))
            throw new NotSupportedException($"quantizing to {GgmlTypeInfo.Name(type)} is not supported");
        long need = GgmlTypeInfo.RowBytes(type, source.Length);
        if (destination.Length < need)
            throw new ArgumentException($"{source.Length} floats as {type} need {need} bytes but the destination holds {destination.Length}", nameof(destination));
        fixed (float* x = source)
        fixed (byte* y = destination)
        {
            int n = source.Length;
            switch (type)
            {
                case GgmlType.F32: source.CopyTo(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(destination)); break;
                case GgmlType.F16: for (int i = 0; i < n; i++) ((ushort*)y)[i] = Fp.FloatToHalf(x[i]); break;
                case GgmlType.BF16: for (int i = 0; i < n; i++) ((ushort*)y)[i] = Fp.FloatToBFloat16(x[i]); break;
                case GgmlType.Q8_0: Q8_0(x, y, n / 32); break;
                case GgmlType.Q4_0: Q4_0(x, y, n / 32); break;
                case GgmlType.Q4_1: Q4_1(x, y, n / 32); break;
                case GgmlType.Q5_0: Q5_0(x, y, n / 32); break;
                case GgmlType.Q5_1: Q5_1(x, y, n / 32); break;
                case GgmlType.Q2_K: Q2_K(x, y, n / 256); break;
                case GgmlType.Q3_K: Q3_K(x, y, n / 256); break;
                case GgmlType.Q4_K: Q4_K(x, y, n / 256); break;
                case GgmlType.Q5_K: Q5_K(x, y, n / 256); break;
                case GgmlType.Q6_K: Q6_K(x, y, n / 256); break;
                case GgmlType.IQ4_NL: Iq4Nl(x, y, n / 32); break;
                case GgmlType.IQ4_XS: Iq4Xs(x, y, n / 256); break;
            }
        }
        return (int)need;
    }

    /// <summary>C's roundf: halfway cases away from zero.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float RoundAway(float v) => MathF.Round(v, MidpointRounding.AwayFromZero);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WriteHalf(byte* p, float v) => Unsafe.WriteUnaligned(p, Fp.FloatToHalf(v));

    private static void Q8_0(float* x, byte* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 32, y += 34)
        {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
            float d = amax / 127;
            float id = d != 0 ? 1.0f / d : 0.0f;
            WriteHalf(y, d);
            var qs = (sbyte*)(y + 2);
            for (int j = 0; j < 32; j++) qs[j] = (sbyte)RoundAway(x[j] * id);
        }
    }

    /// <summary>The element of largest magnitude, keeping its sign (the first one on ties, as ggml keeps it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float SignedAbsMax(float* x)
    {
        float amax = 0, max = 0;
        for (int j = 0; j < 32; j++)
        {
            float a = MathF.Abs(x[j]);
            if (amax < a) { amax = a; max = x[j]; }
        }
        return max;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MinMax(float* x, out float min, out float max)
    {
        min = float.MaxValue;
        max = -float.MaxValue;
        for (int j = 0; j < 32; j++)
        {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
    }

    private static void Q4_0(float* x, byte* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 32, y += 18)
        {
            float d = SignedAbsMax(x) / -8;
            float id = d != 0 ? 1.0f / d : 0.0f;
            WriteHalf(y, d);
            for (int j = 0; j < 16; j++)
            {
                int q0 = Math.Min(15, (int)(x[j] * id + 8.5f));
                int q1 = Math.Min(15, (int)(x[j + 16] * id + 8.5f));
                y[2 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    private static void Q4_1(float* x, byte* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 32, y += 20)
        {
            MinMax(x, out float min, out float max);
            float d = (max - min) / 15;
            float id = d != 0 ? 1.0f / d : 0.0f;
            WriteHalf(y, d);
            WriteHalf(y + 2, min);
            for (int j = 0; j < 16; j++)
            {
                int q0 = Math.Min(15, (int)((x[j] - min) * id + 0.5f));
                int q1 = Math.Min(15, (int)((x[j + 16] - min) * id + 0.5f));
                y[4 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    private static void Q5_0(float* x, byte* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 32, y += 22)
        {
            float d = SignedAbsMax(x) / -16;
            float id = d != 0 ? 1.0f / d : 0.0f;
            WriteHalf(y, d);
            uint qh = 0;
            for (int j = 0; j < 16; j++)
            {
                int q0 = Math.Min(31, (int)(x[j] * id + 16.5f));
                int q1 = Math.Min(31, (int)(x[j + 16] * id + 16.5f));
                y[6 + j] = (byte)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
                qh |= (uint)((q0 & 0x10) >> 4) << j;
                qh |= (uint)((q1 & 0x10) >> 4) << (j + 16);
            }
            Unsafe.WriteUnaligned(y + 2, qh);
        }
    }

    private static void Q5_1(float* x, byte* y, int blocks)
    {
        for (int i = 0; i < blocks; i++, x += 32, y += 24)
        {
            MinMax(x, out float min, out float max);
            float d = (max - min) / 31;
            float id = d != 0 ? 1.0f / d : 0.0f;
            WriteHalf(y, d);
            WriteHalf(y + 2, min);
            uint qh = 0;
            for (int j = 0; j < 16; j++)
            {
                int q0 = (int)((x[j] - min) * id + 0.5f);
                int q1 = (int)((x[j + 16] - min) * id + 0.5f);
                y[8 + j] = (byte)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
                qh |= (uint)((q0 & 0x10) >> 4) << j;
                qh |= (uint)((q1 & 0x10) >> 4) << (j + 16);
            }
            Unsafe.WriteUnaligned(y + 4, qh);
        }
    }
}
