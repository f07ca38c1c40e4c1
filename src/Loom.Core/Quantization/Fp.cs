using System.Runtime.CompilerServices;

namespace Loom.Core.Quantization;

/// <summary>Scalar half-precision helpers with ggml's rounding (IEEE half, round to nearest even; bf16 as ggml rounds it).</summary>
public static unsafe class Fp
{
    /// <summary>
    /// Exact fp16 → fp32 without calls or table look-ups (kernels read a scale per block; a call there would force
    /// their vector accumulators through memory). Shifting the magnitude into place and scaling by 2^112 rebases the
    /// exponent and turns subnormal halves into the right normal floats; Inf/NaN get the all-ones exponent instead.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float HalfToFloat(ushort bits)
    {
        uint magnitude = (uint)bits & 0x7fffu;
        uint rebased = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(magnitude << 13) * 5.192296858534828e33f);
        uint infOrNan = 0x7f800000u | (magnitude << 13);
        uint result = magnitude >= 0x7c00u ? infOrNan : rebased;
        return BitConverter.UInt32BitsToSingle(result | (((uint)bits & 0x8000u) << 16));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FloatToHalf(float value) => BitConverter.HalfToUInt16Bits((Half)value);

    /// <summary>Rounds a float to the nearest value a half can hold (what storing a scale as fp16 does to it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float RoundToHalf(float value) => (float)(Half)value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BFloat16ToFloat(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>ggml's fp32→bf16: round to nearest even; NaN stays NaN (forced quiet).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FloatToBFloat16(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if ((u & 0x7fffffff) > 0x7f800000)
            return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float ReadHalf(byte* p) => HalfToFloat(Unsafe.ReadUnaligned<ushort>(p));
}
