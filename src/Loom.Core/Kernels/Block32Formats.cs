using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Loom.Core.Quantization;
using static Loom.Core.Kernels.SimdHelpers;

namespace Loom.Core.Kernels;

/// <summary>
/// A ggml type with 32-element blocks, seen as a scale (and for Q4_1/Q5_1 a min) times 32 small integers.
/// Kernels are generic over these structs so the JIT emits one specialised loop per type.
/// </summary>
internal unsafe interface IBlock32Format
{
    static abstract int BlockBytes { get; }

    /// <summary>True for w = d·q + m with unsigned q (Q4_1, Q5_1); false for w = d·q with signed q.</summary>
    static abstract bool HasMin { get; }

    static abstract float Scale(byte* block);

    static abstract float Min(byte* block);

    /// <summary>The 32 integer levels of the block, in element order.</summary>
    static abstract void UnpackScalar(byte* block, sbyte* levels);

    /// <summary>The 32 integer levels as one AVX2 register (unsigned when <see cref="HasMin"/>).</summary>
    static abstract Vector256<sbyte> Unpack(byte* block);
}

internal unsafe struct Q4_0Format : IBlock32Format
{
    public static int BlockBytes => 18;
    public static bool HasMin => false;
    public static float Scale(byte* b) => Fp.ReadHalf(b);
    public static float Min(byte* b) => 0;

    public static void UnpackScalar(byte* b, sbyte* q)
    {
        for (int j = 0; j < 16; j++)
        {
            q[j] = (sbyte)((b[2 + j] & 0x0F) - 8);
            q[j + 16] = (sbyte)((b[2 + j] >> 4) - 8);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<sbyte> Unpack(byte* b) => (Nibbles(b + 2) - Vector256.Create((byte)8)).AsSByte();
}

internal unsafe struct Q4_1Format : IBlock32Format
{
    public static int BlockBytes => 20;
    public static bool HasMin => true;
    public static float Scale(byte* b) => Fp.ReadHalf(b);
    public static float Min(byte* b) => Fp.ReadHalf(b + 2);

    public static void UnpackScalar(byte* b, sbyte* q)
    {
        for (int j = 0; j < 16; j++)
        {
            q[j] = (sbyte)(b[4 + j] & 0x0F);
            q[j + 16] = (sbyte)(b[4 + j] >> 4);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<sbyte> Unpack(byte* b) => Nibbles(b + 4).AsSByte();
}

internal unsafe struct Q5_0Format : IBlock32Format
{
    public static int BlockBytes => 22;
    public static bool HasMin => false;
    public static float Scale(byte* b) => Fp.ReadHalf(b);
    public static float Min(byte* b) => 0;

    public static void UnpackScalar(byte* b, sbyte* q)
    {
        uint qh = Unsafe.ReadUnaligned<uint>(b + 2);
        for (int j = 0; j < 16; j++)
        {
            q[j] = (sbyte)(((b[6 + j] & 0x0F) | (int)(((qh >> j) & 1) << 4)) - 16);
            q[j + 16] = (sbyte)(((b[6 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) - 16);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<sbyte> Unpack(byte* b)
    {
        var high = BitsToBytes(Unsafe.ReadUnaligned<uint>(b + 2)) & Vector256.Create((byte)0x10);
        return ((Nibbles(b + 6) | high) - Vector256.Create((byte)16)).AsSByte();
    }
}

internal unsafe struct Q5_1Format : IBlock32Format
{
    public static int BlockBytes => 24;
    public static bool HasMin => true;
    public static float Scale(byte* b) => Fp.ReadHalf(b);
    public static float Min(byte* b) => Fp.ReadHalf(b + 2);

    public static void UnpackScalar(byte* b, sbyte* q)
    {
        uint qh = Unsafe.ReadUnaligned<uint>(b + 4);
        for (int j = 0; j < 16; j++)
        {
            q[j] = (sbyte)((b[8 + j] & 0x0F) | (int)(((qh >> j) & 1) << 4));
            q[j + 16] = (sbyte)((b[8 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<sbyte> Unpack(byte* b)
    {
        var high = BitsToBytes(Unsafe.ReadUnaligned<uint>(b + 4)) & Vector256.Create((byte)0x10);
        return (Nibbles(b + 8) | high).AsSByte();
    }
}

internal unsafe struct Q8_0Format : IBlock32Format
{
    public static int BlockBytes => 34;
    public static bool HasMin => false;
    public static float Scale(byte* b) => Fp.ReadHalf(b);
    public static float Min(byte* b) => 0;

    public static void UnpackScalar(byte* b, sbyte* q)
    {
        for (int j = 0; j < 32; j++) q[j] = (sbyte)b[2 + j];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<sbyte> Unpack(byte* b) => Vector256.Load((sbyte*)(b + 2));
}

internal unsafe struct Iq4NlFormat : IBlock32Format
{
    public static int BlockBytes => 18;
    public static bool HasMin => false;
    public static float Scale(byte* b) => Fp.ReadHalf(b);
    public static float Min(byte* b) => 0;

    public static void UnpackScalar(byte* b, sbyte* q)
    {
        var values = Dequantizer.Iq4NlValues;
        for (int j = 0; j < 16; j++)
        {
            q[j] = values[b[2 + j] & 0x0F];
            q[j + 16] = values[b[2 + j] >> 4];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<sbyte> Unpack(byte* b) => Iq4NlLookup(Nibbles(b + 2));

    /// <summary>Maps 32 nibbles to the IQ4_NL levels with one in-lane byte shuffle.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<sbyte> Iq4NlLookup(Vector256<byte> nibbles)
    {
        var table = Vector128.Create((sbyte)-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);
        return System.Runtime.Intrinsics.X86.Avx2.Shuffle(Vector256.Create(table, table), nibbles.AsSByte());
    }
}
