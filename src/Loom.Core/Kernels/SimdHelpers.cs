using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Loom.Core.Kernels;

/// <summary>Small AVX2 building blocks shared by the integer dot kernels.</summary>
internal static unsafe class SimdHelpers
{
    /// <summary>
    /// Asks for the cache lines of [<paramref name="start"/>, start + <paramref name="bytes"/>) in L2: the batch tiles fetch
    /// the next tile's weights, a block's share at a time, while they compute on the current one.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void FetchIntoL2(byte* start, long bytes)
    {
        for (long line = 0; line < bytes; line += 64) Sse.Prefetch1(start + line);
    }

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

    /// <summary>Exact fp16 → fp32 of eight halves held in the low 16 bits of each lane (.NET exposes no F16C): integer rebasing for normals, Inf and NaN; int→float·2^-24 for subnormals.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> HalfToSingle(Vector256<uint> h)
    {
        var sign = (h & Vector256.Create(0x8000u)) << 16;
        var magnitude = h & Vector256.Create(0x7fffu);
        var rebased = (magnitude << 13) + Vector256.Create(0x38000000u);                        // exponent 15 → 127
        rebased += Vector256.GreaterThanOrEqual(magnitude, Vector256.Create(0x7c00u)) & Vector256.Create(0x38000000u); // Inf/NaN: all-ones exponent
        var subnormal = Vector256.ConvertToSingle(magnitude.AsInt32()) * Vector256.Create(1.0f / 16777216);      // m·2^-24, exact
        var isSubnormal = Vector256.LessThan(magnitude, Vector256.Create(0x400u));
        return (Vector256.ConditionalSelect(isSubnormal, subnormal.AsUInt32(), rebased) | sign).AsSingle();
    }

    /// <summary>The same conversion for sixteen halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> HalfToSingle(Vector512<uint> h)
    {
        var sign = (h & Vector512.Create(0x8000u)) << 16;
        var magnitude = h & Vector512.Create(0x7fffu);
        var rebased = (magnitude << 13) + Vector512.Create(0x38000000u);
        rebased += Vector512.GreaterThanOrEqual(magnitude, Vector512.Create(0x7c00u)) & Vector512.Create(0x38000000u);
        var subnormal = Vector512.ConvertToSingle(magnitude.AsInt32()) * Vector512.Create(1.0f / 16777216);
        var isSubnormal = Vector512.LessThan(magnitude, Vector512.Create(0x400u));
        return (Vector512.ConditionalSelect(isSubnormal, subnormal.AsUInt32(), rebased) | sign).AsSingle();
    }
}
