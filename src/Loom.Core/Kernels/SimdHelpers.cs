using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Loom.Core.Kernels;

/// <summary>Small AVX2 building blocks shared by the integer dot kernels.</summary>
internal static unsafe class SimdHelpers
{
    /// <summary>Splits 16 packed bytes into 32 nibbles: low nibbles in bytes 0..15, high nibbles in bytes 16..31 (ggml's order).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Nibbles(byte* packed16)
    {
        var v = Vector128.Load(packed16);
        var both = Vector256.Create(v, v).AsUInt32();
        var shifted = Avx2.ShiftRightLogicalVariable(both, Vector256.Create(0u, 0, 0, 0, 4, 4, 4, 4));
        return shifted.AsByte() & Vector256.Create((byte)0x0F);
    }

    /// <summary>Turns the 32 bits of <paramref name="bits"/> into 32 bytes: 0xFF where bit j is set, else 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> BitsToBytes(uint bits)
    {
        var spread = Avx2.Shuffle(Vector256.Create(bits).AsByte(),
            Vector256.Create((byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
        var mask = Vector256.Create(0x8040201008040201UL).AsByte();
        return Vector256.Equals(spread & mask, mask);
    }

    /// <summary>Eight int32 sums of adjacent products of unsigned bytes <paramref name="u"/> and signed bytes <paramref name="s"/> (groups of four).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> DotUnsignedSigned(Vector256<byte> u, Vector256<sbyte> s)
    {
        if (AvxVnni.IsSupported)
            return AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, u, s);
        return Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256.Create((short)1));
    }

    /// <summary>Same for two signed byte vectors (|a|·sign(b, a), as llama.cpp does; a is never −128 times b = −128 here).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> DotSigned(Vector256<sbyte> a, Vector256<sbyte> b) =>
        DotUnsignedSigned(Avx2.Abs(a), Avx2.Sign(b, a));

    /// <summary>Unsigned×signed pair products (16 int16), each pair then weighted by <paramref name="scales"/> and summed into 8 int32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> ScaledDot(Vector256<byte> u, Vector256<sbyte> s, Vector256<short> scales) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), scales);

    /// <summary>Int16 scale vector: <paramref name="first"/> for the first 16 bytes of a 32-byte dot, <paramref name="second"/> for the rest.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> Scales16(int first, int second) =>
        Vector256.Create(Vector128.Create((short)first), Vector128.Create((short)second));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector256<float> v) => Vector256.Sum(v);
}
