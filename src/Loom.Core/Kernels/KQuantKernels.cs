using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Loom.Core.Quantization;
using static Loom.Core.Kernels.SimdHelpers;

namespace Loom.Core.Kernels;

/// <summary>
/// Row · activation dots for the 256-element super-block types (Q2_K..Q6_K, IQ4_XS) against Q8_K activations.
/// Per super-block: d_w·d_x·Σ_g scale_g·(Σ q_w·q_x) − dmin_w·d_x·Σ_g min_g·bsum_g, the integer part exact.
/// Offsets (Q3_K's −4, Q6_K's −32) are taken out through the activation block sums, as llama.cpp does.
/// </summary>
internal static unsafe class KQuantKernels
{
    // ---- Portable path: unpack a super-block into levels and per-16 scales/mins, then one generic integer dot. ----

    public static float DotPortable(GgmlType type, byte* row, int superBlocks, in ActivationRow x)
    {
        int blockBytes = GgmlTypeInfo.BlockBytes(type);
        float total = 0;
        for (int i = 0; i < superBlocks; i++, row += blockBytes)
        {
            var (sumi, summ, d, dmin) = IntegerSums(type, row, x.Qs + i * 256, x.BSums + i * 16);
            total += d * x.D[i] * sumi - dmin * x.D[i] * summ;
        }
        return total;
    }

    /// <summary>
    /// A super-block's exact integer sums against Q8_K levels <paramref name="q8"/>: Σ_g scale_g·Σ level·q (levels with
    /// their offsets applied) and Σ_g min_g·bsum_g, with its float scales d and dmin.
    /// </summary>
    public static (int Sumi, int Summ, float D, float Dmin) IntegerSums(GgmlType type, byte* block, sbyte* q8, short* bsums)
    {
        sbyte* levels = stackalloc sbyte[256];
        int* scales = stackalloc int[16];
        int* mins = stackalloc int[16];
        UnpackScalar(type, block, levels, scales, mins, out float d, out float dmin);
        int sumi = 0, summ = 0;
        for (int g = 0; g < 16; g++)
        {
            int s = 0;
            for (int j = 0; j < 16; j++) s += levels[g * 16 + j] * q8[g * 16 + j];
            sumi += scales[g] * s;
            summ += mins[g] * bsums[g];
        }
        return (sumi, summ, d, dmin);
    }

    /// <summary>Integer form of one super-block: w[e] = d·scale[e/16]·levels[e] − dmin·min[e/16].</summary>
    private static void UnpackScalar(GgmlType type, byte* b, sbyte* q, int* scales, int* mins, out float d, out float dmin)
    {
        new Span<int>(mins, 16).Clear();
        dmin = 0;
        switch (type)
        {
            case GgmlType.Q2_K:
            {
                d = Fp.ReadHalf(b + 80);
                dmin = Fp.ReadHalf(b + 82);
                for (int g = 0; g < 16; g++) { scales[g] = b[g] & 0x0F; mins[g] = b[g] >> 4; }
                byte* qs = b + 16;
                for (int n = 0; n < 2; n++, qs += 32)
                    for (int j = 0; j < 4; j++)
                        for (int l = 0; l < 32; l++)
                            q[n * 128 + j * 32 + l] = (sbyte)((qs[l] >> (2 * j)) & 3);
                break;
            }
            case GgmlType.Q3_K:
            {
                d = Fp.ReadHalf(b + 108);
                Dequantizer.UnpackQ3KScales(b + 96, q); // q is free until the levels are written below
                for (int g = 0; g < 16; g++) scales[g] = q[g];
                byte* hm = b;
                byte* qs = b + 32;
                for (int n = 0; n < 2; n++, qs += 32)
                    for (int j = 0; j < 4; j++)
                    {
                        int m = 1 << (4 * n + j);
                        for (int l = 0; l < 32; l++)
                            q[n * 128 + j * 32 + l] = (sbyte)(((qs[l] >> (2 * j)) & 3) - ((hm[l] & m) != 0 ? 0 : 4));
                    }
                break;
            }
            case GgmlType.Q4_K:
            case GgmlType.Q5_K:
            {
                d = Fp.ReadHalf(b);
                dmin = Fp.ReadHalf(b + 2);
                bool five = type == GgmlType.Q5_K;
                byte* qh = b + 16;
                byte* qs = b + (five ? 48 : 16);
                for (int j = 0; j < 8; j++)
                {
                    Dequantizer.ScaleMinK4(j, b + 4, out int sc, out int mn);
                    scales[2 * j] = scales[2 * j + 1] = sc;
                    mins[2 * j] = mins[2 * j + 1] = mn;
                }
                for (int c = 0; c < 4; c++, qs += 32)
                    for (int l = 0; l < 32; l++)
                    {
                        int lo = qs[l] & 0x0F, hi = qs[l] >> 4;
                        if (five)
                        {
                            lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                            hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                        }
                        q[c * 64 + l] = (sbyte)lo;
                        q[c * 64 + 32 + l] = (sbyte)hi;
                    }
                break;
            }
            case GgmlType.Q6_K:
            {
                d = Fp.ReadHalf(b + 208);
                for (int g = 0; g < 16; g++) scales[g] = ((sbyte*)(b + 192))[g];
                byte* ql = b;
                byte* qh = b + 128;
                for (int n = 0; n < 2; n++, ql += 64, qh += 32)
                    for (int l = 0; l < 32; l++)
                    {
                        q[n * 128 + l] = (sbyte)(((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32);
                        q[n * 128 + l + 32] = (sbyte)(((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32);
                        q[n * 128 + l + 64] = (sbyte)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                        q[n * 128 + l + 96] = (sbyte)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
                    }
                break;
            }
            case GgmlType.IQ4_XS:
            {
                d = Fp.ReadHalf(b);
                int scalesH = Unsafe.ReadUnaligned<ushort>(b + 2);
                var values = Dequantizer.Iq4NlValues;
                byte* qs = b + 8;
                for (int ib = 0; ib < 8; ib++, qs += 16)
                {
                    int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((scalesH >> (2 * ib)) & 3) << 4);
                    scales[2 * ib] = scales[2 * ib + 1] = ls - 32;
                    for (int j = 0; j < 16; j++)
                    {
                        q[ib * 32 + j] = values[qs[j] & 0x0F];
                        q[ib * 32 + 16 + j] = values[qs[j] >> 4];
                    }
                }
                break;
            }
            default:
                throw new NotSupportedException($"{GgmlTypeInfo.Name(type)} is not a super-block type");
        }
    }

    // ---- AVX2 path: one hand-written loop per type. ----

    /// <summary>Low-nibble mask (a property so the JIT folds it into a constant; a static field would add a class-init check).</summary>
    private static Vector256<byte> Low4
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector256.Create((byte)0x0F);
    }

    /// <summary>Scales 0..7 of 16 widened ones, in both lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> LowHalfScales(Vector256<short> scales16) => Avx2.Permute4x64(scales16.AsInt64(), 0b01_00_01_00).AsInt16();

    /// <summary>Scales 8..15 of 16 widened ones, in both lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> HighHalfScales(Vector256<short> scales16) => Avx2.Permute4x64(scales16.AsInt64(), 0b11_10_11_10).AsInt16();

    /// <summary>Int16 vector: scale <paramref name="k"/> in the low 128 bits, scale <paramref name="k"/>+1 in the high (from <see cref="LowHalfScales"/> or <see cref="HighHalfScales"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> PairScales(Vector256<short> widened, int k) => Avx2.Shuffle(widened.AsByte(), PairPick(k)).AsInt16();

    /// <summary>The shuffle mask of <see cref="PairScales"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> PairPick(int k) =>
        Vector256.Create(Vector128.Create((short)(0x0100 + 0x0202 * k)), Vector128.Create((short)(0x0302 + 0x0202 * k))).AsByte();

    /// <summary>
    /// Int16 vector of the unsigned byte scale <paramref name="k"/> everywhere, from <see cref="ScalesAndMinsK4"/>'s bytes in both
    /// 128-bit lanes: one shuffle picks byte k for each low byte and zeroes each high byte (index 0x80).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> OneScale(Vector256<byte> scalesAndMins, int k) =>
        Avx2.Shuffle(scalesAndMins, Vector256.Create((short)(0x8000 + k)).AsByte()).AsInt16();

    /// <summary>Q3_K's 16 scales (−32..31) in a register, unpacked as <see cref="Dequantizer.UnpackQ3KScales"/> does.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<sbyte> Q3KScales(byte* packed)
    {
        const uint kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
        uint a0 = Unsafe.ReadUnaligned<uint>(packed), a1 = Unsafe.ReadUnaligned<uint>(packed + 4), tmp = Unsafe.ReadUnaligned<uint>(packed + 8);
        var v = Vector128.Create(
            (a0 & kmask2) | (((tmp >> 0) & kmask1) << 4),
            (a1 & kmask2) | (((tmp >> 2) & kmask1) << 4),
            ((a0 >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4),
            ((a1 >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4));
        return v.AsSByte() - Vector128.Create((sbyte)32);
    }

    /// <summary>
    /// A super-block's fp16 scale as <see cref="Fp.ReadHalf"/> gives it, normal numbers rebased in a general register:
    /// the general conversion's multiply sends each scale through the vector unit and back before it is used there.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float ReadScale(byte* p)
    {
        uint bits = Unsafe.ReadUnaligned<ushort>(p);
        if ((bits & 0x7C00) - 0x0400u < 0x7800u) // exponent 1..30
            return BitConverter.UInt32BitsToSingle(((bits & 0x8000) << 16) | (((bits & 0x7FFF) << 13) + 0x38000000));
        return Fp.HalfToFloat((ushort)bits);
    }

    /// <summary>GF(2) affine matrix moving each byte's high nibble down: result bit i (matrix byte 7−i) = input bit i+4, for i &lt; 4.</summary>
    private const ulong HighNibbleMatrix = 0x1020408000000000;

    /// <summary>Each byte's high nibble moved down: one GF(2) affine transform where GFNI is present, else shift and mask.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> HighNibbles(Vector256<byte> v)
    {
        if (Gfni.V256.IsSupported)
            return Gfni.V256.GaloisFieldAffineTransform(v, Vector256.Create(HighNibbleMatrix).AsByte(), 0);
        return ShiftRight(v, 4) & Low4;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> ShiftRight(Vector256<byte> v, int count) => Vector256.ShiftRightLogical(v.AsUInt16(), count).AsByte();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> ShiftLeft(Vector256<byte> v, int count) => Vector256.ShiftLeft(v.AsUInt16(), count).AsByte();

    /// <summary>
    /// Q6_K's level offset, 32·Σ_g scale_g·bsum_g, left in eight int32 lanes (groups 2k and 2k+1 in lane k) for the
    /// caller to subtract from its lane sums: no horizontal sum and no trip through a general register per super-block.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Q6KOffsets(Vector256<short> scales16, short* bsums) =>
        Avx2.MultiplyAddAdjacent(Vector256.Load(bsums), scales16) << 5;

    /// <summary>Σ_g (per-16 scale_g)·bsum_g over the 16 groups of a super-block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int ScaledBlockSums(Vector256<short> scales16, short* bsums) =>
        Vector256.Sum(Avx2.MultiplyAddAdjacent(Vector256.Load(bsums), scales16));

    public static float DotQ2KAvx2(byte* row, int superBlocks, in ActivationRow x)
    {
        var acc = Vector256<float>.Zero;
        float minTotal = 0;
        var mask = Vector256.Create((byte)3);
        for (int i = 0; i < superBlocks; i++, row += 84)
        {
            sbyte* q8 = x.Qs + i * 256;
            var packedScales = Vector128.Load(row);
            var mins16 = Avx2.ConvertToVector256Int16(Sse2.ShiftRightLogical(packedScales.AsUInt16(), 4).AsByte() & Vector128.Create((byte)0x0F));
            int summ = ScaledBlockSums(mins16, x.BSums + i * 16);
            var sumi = Vector256<int>.Zero;
            for (int n = 0; n < 2; n++)
            {
                var q = Vector256.Load(row + 16 + 32 * n);
                for (int j = 0; j < 4; j++)
                {
                    var w = ShiftRight(q, 2 * j) & mask;
                    int s = 8 * n + 2 * j;
                    sumi += ScaledDot(w, Vector256.Load(q8 + 128 * n + 32 * j), Scales16(row[s] & 0x0F, row[s + 1] & 0x0F));
                }
            }
            float dx = x.D[i];
            acc = Fma.MultiplyAdd(Vector256.Create(Fp.ReadHalf(row + 80) * dx), Avx.ConvertToVector256Single(sumi), acc);
            minTotal += Fp.ReadHalf(row + 82) * dx * summ;
        }
        return Sum(acc) - minTotal;
    }

    public static float DotQ3KAvx2(byte* row, int superBlocks, in ActivationRow x)
    {
        var acc = Vector256<float>.Zero;
        var mask = Vector256.Create((byte)3);
        var four = Vector256.Create((byte)4);
        for (int i = 0; i < superBlocks; i++, row += 110)
        {
            sbyte* q8 = x.Qs + i * 256;
            var sc = Q3KScales(row + 96);
            var scales16 = Avx2.ConvertToVector256Int16(sc);
            // levels are stored as u + 4h - 4 with u in 0..3, h the high bit; dot with (u + 4h) and take 4·Σ sc·bsum away.
            int offset = 4 * ScaledBlockSums(scales16, x.BSums + i * 16);
            var hm = Vector256.Load(row);
            var sumi = Vector256<int>.Zero;
            for (int n = 0; n < 2; n++)
            {
                var q = Vector256.Load(row + 32 + 32 * n);
                // this half's eight scales, widened into both lanes
                var half = n == 0 ? LowHalfScales(scales16) : HighHalfScales(scales16);
                for (int j = 0; j < 4; j++)
                {
                    var bit = Vector256.Create((byte)(1 << (4 * n + j)));
                    var w = (ShiftRight(q, 2 * j) & mask) | (Vector256.Equals(hm & bit, bit) & four);
                    sumi += ScaledDot(w, Vector256.Load(q8 + 128 * n + 32 * j), PairScales(half, 2 * j));
                }
            }
            sumi -= Vector256.CreateScalar(offset);
            acc = Fma.MultiplyAdd(Vector256.Create(Fp.ReadHalf(row + 108) * x.D[i]), Avx.ConvertToVector256Single(sumi), acc);
        }
        return Sum(acc);
    }

    /// <summary>Q4_K/Q5_K's 12 packed bytes → 8 scales (bytes 0..7) and 8 mins (bytes 8..15), unpacked in a vector register.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<byte> ScalesAndMinsK4(byte* packed)
    {
        // 32-bit words a0 a1 a2 (and 4 bytes of the levels after them, unused). Bytes of
        //   scales 0..3 = a0 & 0x3f, scales 4..7 = (a2 & 0x0f) | top two bits of a0's bytes at bits 4-5,
        //   mins 0..3 = a1 & 0x3f,   mins 4..7 = (a2 >> 4 & 0x0f) | top two bits of a1's bytes at bits 4-5.
        var a = Vector128.Load((uint*)packed);
        var low = Avx2.ShiftRightLogicalVariable(Sse2.Shuffle(a, 0b10_01_10_00), Vector128.Create(0u, 0, 0, 4))
            & Vector128.Create(0x3f3f3f3fu, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f);
        var top = Sse2.ShiftRightLogical(Sse2.Shuffle(a, 0b01_01_00_00), 2) & Vector128.Create(0u, 0x30303030, 0, 0x30303030);
        return (low | top).AsByte();
    }

    /// <summary>
    /// min_k·(bsum_2k + bsum_2k+1) of the eight 32-element sub-blocks in lane k. Kept in a vector (the kernels scale
    /// it by dmin·d_x in float lanes) rather than summed horizontally once per super-block. Takes <see cref="ScalesAndMinsK4"/>'s bytes in both 128-bit lanes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> MinTimesSums(Vector256<byte> scalesAndMins, short* bsums)
    {
        // each min covers two adjacent groups of 16, so repeat it, widened by zeroing the high bytes: m0 m0 m1 m1 ... m7 m7.
        var pick = Vector256.Create(0x8009800980088008UL, 0x800B800B800A800AUL, 0x800D800D800C800CUL, 0x800F800F800E800EUL).AsByte();
        return Avx2.MultiplyAddAdjacent(Vector256.Load(bsums), Avx2.Shuffle(scalesAndMins, pick).AsInt16());
    }

    /// <summary>The levels of 64 elements <paramref name="c"/>·64.. of a Q4_K/Q5_K super-block: low nibbles then high nibbles, Q5_K's fifth bits added.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector256<byte> Low, Vector256<byte> High) LevelsK45(byte* qs, Vector256<byte> qh, int c, bool five)
    {
        var raw = Vector256.Load(qs + 32 * c);
        var lo = raw & Low4;
        var hi = HighNibbles(raw);
        if (five)
        {
            var sixteen = Vector256.Create((byte)16);
            var bitLo = Vector256.Create((byte)(1 << (2 * c)));
            var bitHi = Vector256.Create((byte)(2 << (2 * c)));
            lo |= Vector256.Equals(qh & bitLo, bitLo) & sixteen;
            hi |= Vector256.Equals(qh & bitHi, bitHi) & sixteen;
        }
        return (lo, hi);
    }

    /// <summary>Σ scale·(level·q) of 64 elements <paramref name="c"/>·64.. into eight lanes (written out per c so the scale shuffles get constant masks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> ChunkK45(byte* qs, Vector256<byte> qh, sbyte* q8, Vector256<byte> scales, int c, bool five)
    {
        var (lo, hi) = LevelsK45(qs, qh, c, five);
        return ScaledDot(lo, Vector256.Load(q8 + 64 * c), OneScale(scales, 2 * c)) + ScaledDot(hi, Vector256.Load(q8 + 64 * c + 32), OneScale(scales, 2 * c + 1));
    }

    public static float DotQ4KAvx2(byte* row, int superBlocks, in ActivationRow x) => DotK45(row, superBlocks, x, five: false);

    public static float DotQ5KAvx2(byte* row, int superBlocks, in ActivationRow x) => DotK45(row, superBlocks, x, five: true);

    /// <summary>
    /// Per super-block: d·d_x·Σ lanes of the scaled level dots, less dmin·d_x·Σ lanes of min·bsum, both accumulated in
    /// float lanes and summed once per row (<see cref="Dot4K45"/> does the same per token).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float DotK45(byte* row, int superBlocks, in ActivationRow x, bool five)
    {
        var acc = Vector256<float>.Zero;
        var minAcc = Vector256<float>.Zero;
        int blockBytes = five ? 176 : 144;
        for (int i = 0; i < superBlocks; i++, row += blockBytes)
        {
            PrefetchAhead(row);
            sbyte* q8 = x.Qs + i * 256;
            var sm = ScalesAndMinsK4(row + 4);
            var scales = Vector256.Create(sm, sm);
            var qh = five ? Vector256.Load(row + 16) : default;
            byte* qs = row + (five ? 48 : 16);
            var sumi = ChunkK45(qs, qh, q8, scales, 0, five) + ChunkK45(qs, qh, q8, scales, 1, five)
                + ChunkK45(qs, qh, q8, scales, 2, five) + ChunkK45(qs, qh, q8, scales, 3, five);
            float dx = x.D[i];
            acc = Fma.MultiplyAdd(Vector256.Create(ReadScale(row) * dx), Avx.ConvertToVector256Single(sumi), acc);
            minAcc = Fma.MultiplyAdd(Vector256.Create(ReadScale(row + 2) * dx), Avx.ConvertToVector256Single(MinTimesSums(scales, x.BSums + i * 16)), minAcc);
        }
        return Sum(acc - minAcc);
    }

    /// <summary>How far ahead of the super-block in hand <see cref="PrefetchAhead"/> asks for the row (about 20 Q6_K super-blocks).</summary>
    private const int PrefetchDistance = 4096;

    /// <summary>
    /// Asks for the four cache lines <see cref="PrefetchDistance"/> bytes past <paramref name="p"/>, which covers a super-block
    /// of up to 256 bytes per call. The one-token kernels stream each row once; on Zen 4 the hardware prefetcher alone
    /// left one thread of Q6_K at about 17 GB/s where F16 reaches 24; this brings it to 20–22 (Q4_K about 14 to 16).
    /// Non-temporal, as the weights are not read again before the next token: a little faster than prefetcht0 at one
    /// and two threads, and it leaves L2 to the activations and the KV cache.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchAhead(byte* p)
    {
        p += PrefetchDistance;
        Sse.PrefetchNonTemporal(p);
        Sse.PrefetchNonTemporal(p + 64);
        Sse.PrefetchNonTemporal(p + 128);
        Sse.PrefetchNonTemporal(p + 192);
    }

    /// <summary>
    /// The Q6_K kernels' masks, made once per call and passed down: the JIT reloaded each vector constant in every
    /// iteration otherwise (ten loads per super-block on top of the data; about 11% of the one-token kernel's time).
    /// </summary>
    internal readonly struct Q6KConstants
    {
        public readonly Vector256<byte> Low4 = Vector256.Create((byte)0x0F);
        public readonly Vector256<byte> High2 = Vector256.Create((byte)0x30);
        // GF(2) affine matrices (result bit i takes the input bits set in matrix byte 7−i)
        public readonly Vector256<byte> Bits01To45 = BitPairTo45(0), Bits23To45 = BitPairTo45(2), Bits67To45 = BitPairTo45(6);
        public readonly Vector256<byte> HighNibble = Vector256.Create(HighNibbleMatrix).AsByte();
        public readonly Vector256<byte> Pick0 = PairPick(0), Pick2 = PairPick(2), Pick4 = PairPick(4), Pick6 = PairPick(6);

        public Q6KConstants() { }

        /// <summary>Bits <paramref name="low"/>, <paramref name="low"/>+1 of a byte to bits 4-5 (matrix bytes 3 and 2), the rest cleared.</summary>
        private static Vector256<byte> BitPairTo45(int low) => Vector256.Create((1UL << low) << 24 | (2UL << low) << 16).AsByte();
    }

    /// <summary>
    /// The levels (0..63) of one 128-element half of a Q6_K super-block, as four 32-element chunks: low nibbles of ql
    /// bytes 0..31 and 32..63, then their high nibbles, each with its two qh bits (0-1, 2-3, 4-5, 6-7) as bits 4-5.
    /// With GFNI one affine transform per chunk moves the bits into place already masked (nine operations instead of thirteen).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector256<byte> W1, Vector256<byte> W2, Vector256<byte> W3, Vector256<byte> W4) LevelsQ6K(byte* ql, byte* qhBits, in Q6KConstants k) =>
        LevelsQ6K(Vector256.Load(ql), Vector256.Load(ql + 32), Vector256.Load(qhBits), k);

    /// <summary>The four level chunks of <see cref="LevelsQ6K(byte*, byte*, in Q6KConstants)"/> from ql bytes 0..31 (<paramref name="ql0"/>), 32..63 and their qh byte vector.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static (Vector256<byte> W1, Vector256<byte> W2, Vector256<byte> W3, Vector256<byte> W4) LevelsQ6K(
        Vector256<byte> ql0, Vector256<byte> ql1, Vector256<byte> qh, in Q6KConstants k) =>
        (LevelQ6K1(ql0, qh, k), LevelQ6K2(ql1, qh, k), LevelQ6K3(ql0, qh, k), LevelQ6K4(ql1, qh, k));

    /// <summary>Chunk 1 of <see cref="LevelsQ6K(Vector256{byte}, Vector256{byte}, Vector256{byte}, in Q6KConstants)"/>: low nibbles of ql bytes 0..31 with qh bits 0-1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> LevelQ6K1(Vector256<byte> ql0, Vector256<byte> qh, in Q6KConstants k) =>
        (ql0 & k.Low4) | (Gfni.V256.IsSupported ? Gfni.V256.GaloisFieldAffineTransform(qh, k.Bits01To45, 0) : ShiftLeft(qh, 4) & k.High2);

    /// <summary>Chunk 2: low nibbles of ql bytes 32..63 with qh bits 2-3.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> LevelQ6K2(Vector256<byte> ql1, Vector256<byte> qh, in Q6KConstants k) =>
        (ql1 & k.Low4) | (Gfni.V256.IsSupported ? Gfni.V256.GaloisFieldAffineTransform(qh, k.Bits23To45, 0) : ShiftLeft(qh, 2) & k.High2);

    /// <summary>Chunk 3: high nibbles of ql bytes 0..31 with qh bits 4-5.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> LevelQ6K3(Vector256<byte> ql0, Vector256<byte> qh, in Q6KConstants k) =>
        (Gfni.V256.IsSupported ? Gfni.V256.GaloisFieldAffineTransform(ql0, k.HighNibble, 0) : ShiftRight(ql0, 4) & k.Low4) | (qh & k.High2);

    /// <summary>Chunk 4: high nibbles of ql bytes 32..63 with qh bits 6-7.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<byte> LevelQ6K4(Vector256<byte> ql1, Vector256<byte> qh, in Q6KConstants k) =>
        Gfni.V256.IsSupported
            ? Gfni.V256.GaloisFieldAffineTransform(ql1, k.HighNibble, 0) | Gfni.V256.GaloisFieldAffineTransform(qh, k.Bits67To45, 0)
            : (ShiftRight(ql1, 4) & k.Low4) | (ShiftRight(qh, 2) & k.High2);

    /// <summary>Σ scale·(level·q) of 128-element half <paramref name="n"/> of a Q6_K super-block into eight lanes (written out per half).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> HalfQ6K(byte* row, sbyte* q8, Vector256<short> half, int n, in Q6KConstants k)
    {
        var (w1, w2, w3, w4) = LevelsQ6K(row + 64 * n, row + 128 + 32 * n, k);
        sbyte* q = q8 + 128 * n;
        var scales = half.AsByte();
        return ScaledDot(w1, Vector256.Load(q), Avx2.Shuffle(scales, k.Pick0).AsInt16()) + ScaledDot(w2, Vector256.Load(q + 32), Avx2.Shuffle(scales, k.Pick2).AsInt16())
            + ScaledDot(w3, Vector256.Load(q + 64), Avx2.Shuffle(scales, k.Pick4).AsInt16()) + ScaledDot(w4, Vector256.Load(q + 96), Avx2.Shuffle(scales, k.Pick6).AsInt16());
    }

    public static float DotQ6KAvx2(byte* row, int superBlocks, in ActivationRow x)
    {
        var acc = Vector256<float>.Zero;
        var k = new Q6KConstants();
        sbyte* q8 = x.Qs;
        short* bsums = x.BSums;
        float* dx = x.D;
        for (byte* end = row + 210 * superBlocks; row < end; row += 210, q8 += 256, bsums += 16, dx++)
        {
            PrefetchAhead(row);
            var scales16 = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(row + 192)));
            // levels are stored +32 (0..63): dot with them and take 32·Σ sc·bsum away.
            var sumi = HalfQ6K(row, q8, LowHalfScales(scales16), 0, k) + HalfQ6K(row, q8, HighHalfScales(scales16), 1, k)
                - Q6KOffsets(scales16, bsums);
            acc = Fma.MultiplyAdd(Vector256.Create(ReadScale(row + 208) * *dx), Avx.ConvertToVector256Single(sumi), acc);
        }
        return Sum(acc);
    }

    public static float DotIq4XsAvx2(byte* row, int superBlocks, in ActivationRow x)
    {
        var acc = Vector256<float>.Zero;
        for (int i = 0; i < superBlocks; i++, row += 136)
        {
            sbyte* q8 = x.Qs + i * 256;
            int scalesH = Unsafe.ReadUnaligned<ushort>(row + 2);
            var sumi = Vector256<int>.Zero;
            for (int ib = 0; ib < 8; ib++)
            {
                int ls = ((row[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((scalesH >> (2 * ib)) & 3) << 4);
                var w = Iq4NlFormat.Iq4NlLookup(Nibbles(row + 8 + 16 * ib));
                sumi += ScaledDot(Avx2.Abs(w), Avx2.Sign(Vector256.Load(q8 + 32 * ib), w), Vector256.Create((short)(ls - 32)));
            }
            acc = Fma.MultiplyAdd(Vector256.Create(Fp.ReadHalf(row) * x.D[i]), Avx.ConvertToVector256Single(sumi), acc);
        }
        return Sum(acc);
    }

    // ---- four tokens per pass for the common K types: weights unpacked once per super-block ----

    public static void Dot4Q4KAvx2(byte* row, int superBlocks, ActivationRow* x, float* result) => Dot4K45(row, superBlocks, x, result, five: false);

    public static void Dot4Q5KAvx2(byte* row, int superBlocks, ActivationRow* x, float* result) => Dot4K45(row, superBlocks, x, result, five: true);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4K45(byte* row, int superBlocks, ActivationRow* x, float* result, bool five)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector256<float> m0 = default, m1 = default, m2 = default, m3 = default;
        int blockBytes = five ? 176 : 144;
        for (int i = 0; i < superBlocks; i++, row += blockBytes)
        {
            var sm = ScalesAndMinsK4(row + 4);
            var scales = Vector256.Create(sm, sm);
            float d = ReadScale(row), dmin = ReadScale(row + 2);
            m0 = Fma.MultiplyAdd(Vector256.Create(dmin * x[0].D[i]), Avx.ConvertToVector256Single(MinTimesSums(scales, x[0].BSums + i * 16)), m0);
            m1 = Fma.MultiplyAdd(Vector256.Create(dmin * x[1].D[i]), Avx.ConvertToVector256Single(MinTimesSums(scales, x[1].BSums + i * 16)), m1);
            m2 = Fma.MultiplyAdd(Vector256.Create(dmin * x[2].D[i]), Avx.ConvertToVector256Single(MinTimesSums(scales, x[2].BSums + i * 16)), m2);
            m3 = Fma.MultiplyAdd(Vector256.Create(dmin * x[3].D[i]), Avx.ConvertToVector256Single(MinTimesSums(scales, x[3].BSums + i * 16)), m3);
            var qh = five ? Vector256.Load(row + 16) : default;
            byte* qs = row + (five ? 48 : 16);
            Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default;
            for (int c = 0; c < 4; c++)
            {
                var (lo, hi) = LevelsK45(qs, qh, c, five);
                var scLo = OneScale(scales, 2 * c);
                var scHi = OneScale(scales, 2 * c + 1);
                int o = i * 256 + 64 * c;
                s0 += ScaledDot(lo, Vector256.Load(x[0].Qs + o), scLo) + ScaledDot(hi, Vector256.Load(x[0].Qs + o + 32), scHi);
                s1 += ScaledDot(lo, Vector256.Load(x[1].Qs + o), scLo) + ScaledDot(hi, Vector256.Load(x[1].Qs + o + 32), scHi);
                s2 += ScaledDot(lo, Vector256.Load(x[2].Qs + o), scLo) + ScaledDot(hi, Vector256.Load(x[2].Qs + o + 32), scHi);
                s3 += ScaledDot(lo, Vector256.Load(x[3].Qs + o), scLo) + ScaledDot(hi, Vector256.Load(x[3].Qs + o + 32), scHi);
            }
            a0 = Fma.MultiplyAdd(Vector256.Create(d * x[0].D[i]), Avx.ConvertToVector256Single(s0), a0);
            a1 = Fma.MultiplyAdd(Vector256.Create(d * x[1].D[i]), Avx.ConvertToVector256Single(s1), a1);
            a2 = Fma.MultiplyAdd(Vector256.Create(d * x[2].D[i]), Avx.ConvertToVector256Single(s2), a2);
            a3 = Fma.MultiplyAdd(Vector256.Create(d * x[3].D[i]), Avx.ConvertToVector256Single(s3), a3);
        }
        result[0] = Sum(a0 - m0);
        result[1] = Sum(a1 - m1);
        result[2] = Sum(a2 - m2);
        result[3] = Sum(a3 - m3);
    }

    public static void Dot4Q6KAvx2(byte* row, int superBlocks, ActivationRow* x, float* result)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        var constants = new Q6KConstants();
        for (int i = 0; i < superBlocks; i++, row += 210)
        {
            var scales16 = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(row + 192)));
            var s0 = Vector256<int>.Zero - Q6KOffsets(scales16, x[0].BSums + i * 16);
            var s1 = Vector256<int>.Zero - Q6KOffsets(scales16, x[1].BSums + i * 16);
            var s2 = Vector256<int>.Zero - Q6KOffsets(scales16, x[2].BSums + i * 16);
            var s3 = Vector256<int>.Zero - Q6KOffsets(scales16, x[3].BSums + i * 16);
            for (int n = 0; n < 2; n++)
            {
                var (w1, w2, w3, w4) = LevelsQ6K(row + 64 * n, row + 128 + 32 * n, constants);
                var half = n == 0 ? LowHalfScales(scales16) : HighHalfScales(scales16);
                for (int k = 0; k < 4; k++)
                {
                    var w = k switch { 0 => w1, 1 => w2, 2 => w3, _ => w4 };
                    var scales = PairScales(half, 2 * k);
                    int o = i * 256 + 128 * n + 32 * k;
                    s0 += ScaledDot(w, Vector256.Load(x[0].Qs + o), scales);
                    s1 += ScaledDot(w, Vector256.Load(x[1].Qs + o), scales);
                    s2 += ScaledDot(w, Vector256.Load(x[2].Qs + o), scales);
                    s3 += ScaledDot(w, Vector256.Load(x[3].Qs + o), scales);
                }
            }
            float d = ReadScale(row + 208);
            a0 = Fma.MultiplyAdd(Vector256.Create(d * x[0].D[i]), Avx.ConvertToVector256Single(s0), a0);
            a1 = Fma.MultiplyAdd(Vector256.Create(d * x[1].D[i]), Avx.ConvertToVector256Single(s1), a1);
            a2 = Fma.MultiplyAdd(Vector256.Create(d * x[2].D[i]), Avx.ConvertToVector256Single(s2), a2);
            a3 = Fma.MultiplyAdd(Vector256.Create(d * x[3].D[i]), Avx.ConvertToVector256Single(s3), a3);
        }
        result[0] = Sum(a0);
        result[1] = Sum(a1);
        result[2] = Sum(a2);
        result[3] = Sum(a3);
    }
}
