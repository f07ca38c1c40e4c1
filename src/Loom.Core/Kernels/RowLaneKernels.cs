using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static Loom.Core.Kernels.SimdHelpers;

namespace Loom.Core.Kernels;

/// <summary>
/// Q8_0, Q4_0 and Q5_0 on both SIMD paths (256-bit, except the AVX-512 path's sixteen-row tiles: Zen 4 runs 512-bit integer
/// operations as two halves, so only the tiles gain from halving the instruction count). Each block's
/// integer dot is summed exactly first. Blocks in full groups of eight feed acc[b mod 8] = fma(float(isum_b),
/// d_w,b·d_x,b, acc[b mod 8]) and the eight phases are added in one fixed tree ((a0+a4) + (a2+a6)) + ((a1+a5) +
/// (a3+a7)); the leftover blocks' terms go in order into one more sum, added last.
/// </summary>
/// <remarks>
/// Converting a block's integer dot to float once (not per 8-lane partial) is what makes the multi-token kernels
/// cheap: a tile of eight rows is transposed so that one 32-bit lane holds one row's four bytes of a column group,
/// each activation group is broadcast, and a block costs eight byte dots plus one convert and one FMA for all eight
/// rows. The one-token kernels (decode) reach the same integers by horizontal adds and keep the eight phases in the
/// lanes of one vector, so every row's float arithmetic, and hence its result, is the same whichever kernel ran it
/// (batch invariance). Q4_0's and Q5_0's levels stay unsigned: isum = Σ l·q − 8·Σq (16·Σq), the activation block
/// sums Σq coming with the quantized activations.
/// </remarks>
internal static unsafe class RowLaneKernels
{
    /// <summary>Rows a tile kernel computes together (one per 32-bit lane).</summary>
    public const int TileRows = 8;

    private const int Q8BlockBytes = 34, Q4BlockBytes = 18, Q5BlockBytes = 22;
    private const float HalfRebase = 5.192296858534828e33f; // 2^112
    private const uint HalfInfOrNanShifted = 0x7c00u << 17;

    /// <summary>Bytes of tile scratch per 32-block: eight transposed 32-byte level vectors and eight float scales.</summary>
    /// <remarks>Storing Q8_0's magnitudes too (to skip an abs per token) measured slower: the tile outgrew L1.</remarks>
    public const int TileBytesPerBlock = 9 * 32;

    /// <summary>Rows a 512-bit tile kernel computes together.</summary>
    public const int WideTileRows = 16;

    /// <summary>Bytes of wide-tile scratch per 32-block (Q4_0, Q5_0): sixteen rows' transposed levels and scales.</summary>
    public const int WideTileBytesPerBlock = 2 * TileBytesPerBlock;

    /// <summary>
    /// Bytes of Q8_0 wide-tile scratch per 32-block: sixteen 64-byte pair vectors (lane r of vector p holds row r's
    /// levels 2p and 2p+1 as int16) and then the sixteen rows' float scales.
    /// </summary>
    public const int WideTileQ8BytesPerBlock = 17 * 64;

    // ---- shared pieces ----

    /// <summary>Lane k of the result = the sum of the eight lanes of p_k.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> SumEach(Vector256<int> p0, Vector256<int> p1, Vector256<int> p2, Vector256<int> p3,
        Vector256<int> p4, Vector256<int> p5, Vector256<int> p6, Vector256<int> p7)
    {
        var low = Avx2.HorizontalAdd(Avx2.HorizontalAdd(p0, p1), Avx2.HorizontalAdd(p2, p3));
        var high = Avx2.HorizontalAdd(Avx2.HorizontalAdd(p4, p5), Avx2.HorizontalAdd(p6, p7));
        return Avx2.Permute2x128(low, high, 0x20) + Avx2.Permute2x128(low, high, 0x31);
    }

    /// <summary>The phase tree on one accumulator whose lane k holds phase k.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ReducePhases(Vector256<float> acc)
    {
        var h = acc.GetLower() + acc.GetUpper();       // (a0+a4, a1+a5, a2+a6, a3+a7)
        var g = h + Sse.MoveHighToLow(h, h);           // ((a0+a4)+(a2+a6), (a1+a5)+(a3+a7), ..)
        return g.ToScalar() + g.GetElement(1);
    }

    /// <summary>Eight halves (low 16 bits of each lane) as floats, exact for finite halves; Inf/NaN are tracked in <paramref name="magnitudes"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> FiniteHalves(Vector256<int> halves, ref Vector256<uint> magnitudes)
    {
        magnitudes = Avx2.Max(magnitudes, (halves << 17).AsUInt32());
        return FiniteHalfScales(halves);
    }

    /// <summary>Eight finite halves (low 16 bits of each lane) as floats, exactly: the magnitude moved into a float's place and rebased by 2^112.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> FiniteHalfScales(Vector256<int> halves) =>
        ((((halves << 16) >> 3) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle()) * Vector256.Create(HalfRebase);

    /// <summary>Integer dot of 32 signed weight levels with 32 signed activation levels (eight partial sums).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> SignedDot(Vector256<sbyte> w, Vector256<sbyte> x) => DotUnsignedSigned(Avx2.Abs(w).AsByte(), Avx2.Sign(x, w));

    /// <summary>Transposes eight rows of eight 32-bit groups: on return v_g lane r = group g of row r.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose(ref Vector256<int> v0, ref Vector256<int> v1, ref Vector256<int> v2, ref Vector256<int> v3,
        ref Vector256<int> v4, ref Vector256<int> v5, ref Vector256<int> v6, ref Vector256<int> v7)
    {
        var t0 = Avx2.UnpackLow(v0, v1); var t1 = Avx2.UnpackHigh(v0, v1);
        var t2 = Avx2.UnpackLow(v2, v3); var t3 = Avx2.UnpackHigh(v2, v3);
        var t4 = Avx2.UnpackLow(v4, v5); var t5 = Avx2.UnpackHigh(v4, v5);
        var t6 = Avx2.UnpackLow(v6, v7); var t7 = Avx2.UnpackHigh(v6, v7);
        var u0 = Avx2.UnpackLow(t0.AsInt64(), t2.AsInt64()).AsInt32(); var u1 = Avx2.UnpackHigh(t0.AsInt64(), t2.AsInt64()).AsInt32();
        var u2 = Avx2.UnpackLow(t1.AsInt64(), t3.AsInt64()).AsInt32(); var u3 = Avx2.UnpackHigh(t1.AsInt64(), t3.AsInt64()).AsInt32();
        var u4 = Avx2.UnpackLow(t4.AsInt64(), t6.AsInt64()).AsInt32(); var u5 = Avx2.UnpackHigh(t4.AsInt64(), t6.AsInt64()).AsInt32();
        var u6 = Avx2.UnpackLow(t5.AsInt64(), t7.AsInt64()).AsInt32(); var u7 = Avx2.UnpackHigh(t5.AsInt64(), t7.AsInt64()).AsInt32();
        v0 = Avx2.Permute2x128(u0, u4, 0x20); v4 = Avx2.Permute2x128(u0, u4, 0x31);
        v1 = Avx2.Permute2x128(u1, u5, 0x20); v5 = Avx2.Permute2x128(u1, u5, 0x31);
        v2 = Avx2.Permute2x128(u2, u6, 0x20); v6 = Avx2.Permute2x128(u2, u6, 0x31);
        v3 = Avx2.Permute2x128(u3, u7, 0x20); v7 = Avx2.Permute2x128(u3, u7, 0x31);
    }

    /// <summary>A leftover block's integer dot (the blocks after the last full group of eight).</summary>
    /// <remarks><paramref name="offset"/>: 0 for Q8_0's signed levels, else the unsigned levels' offset (Q4_0 8, Q5_0 16).</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int TailIsum(byte* block, sbyte* xq, short* sums, int offset) =>
        Vector256.Sum(BlockDot(block, xq, offset)) - (offset == 0 ? 0 : offset * *sums);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> UnsignedLevels(byte* block, int offset) =>
        offset == 8 ? Nibbles(block + 2) : Q5_0Format.Unpack(block).AsByte();

    // ---- one token ----

    // The one-token entry points are compiled once, fully optimized, not through the tiers: with tiered PGO, a tier-1
    // body of DotQ4_0 reached through the matrix job's function pointer returned wrong sums on this .NET 10.0.12 after
    // a few hundred calls, in some runs (KernelBatchInvarianceTests.RepeatedCallsStayIdenticalThroughJitTierUp).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotQ8_0(byte* row, int blocks, in ActivationRow x) => DotGatheredScales(row, blocks, x, exactScales: false, offset: 0);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotQ5_0(byte* row, int blocks, in ActivationRow x) => DotGatheredScales(row, blocks, x, exactScales: false, offset: 16);

    private static float DotQ8_0Exact(byte* row, int blocks, in ActivationRow x) => DotGatheredScales(row, blocks, x, exactScales: true, offset: 0);

    private static float DotQ5_0Exact(byte* row, int blocks, in ActivationRow x) => DotGatheredScales(row, blocks, x, exactScales: true, offset: 16);

    /// <summary>
    /// Q8_0 (<paramref name="offset"/> 0: signed levels) and Q5_0 (16: unsigned 5-bit levels, isum = Σ l·q − 16·Σq):
    /// eight block dots reduced to one vector, the eight scales gathered.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float DotGatheredScales(byte* row, int blocks, in ActivationRow x, bool exactScales, int offset)
    {
        int blockBytes = offset == 0 ? Q8BlockBytes : Q5BlockBytes;
        byte* start = row;
        var acc = Vector256<float>.Zero;
        Vector256<uint> magnitudes = default;
        var scaleOffsets = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * blockBytes;
        sbyte* xq = x.Qs;
        int b = 0;
        for (; b + 8 <= blocks; b += 8, row += 8 * blockBytes, xq += 256)
        {
            var isum = SumEach(
                BlockDot(row, xq, offset), BlockDot(row + blockBytes, xq + 32, offset),
                BlockDot(row + 2 * blockBytes, xq + 64, offset), BlockDot(row + 3 * blockBytes, xq + 96, offset),
                BlockDot(row + 4 * blockBytes, xq + 128, offset), BlockDot(row + 5 * blockBytes, xq + 160, offset),
                BlockDot(row + 6 * blockBytes, xq + 192, offset), BlockDot(row + 7 * blockBytes, xq + 224, offset));
            if (offset != 0) isum -= Avx2.ConvertToVector256Int32(x.BSums + b) << 4;
            var halves = Avx2.GatherVector256((int*)row, scaleOffsets, 1) & Vector256.Create(0xFFFF);
            var dw = exactScales ? HalfToSingle(halves.AsUInt32()) : FiniteHalves(halves, ref magnitudes);
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum), dw * Vector256.Load(x.D + b), acc);
        }
        if (!exactScales && Vector256.GreaterThanOrEqualAny(magnitudes, Vector256.Create(HalfInfOrNanShifted)))
            return offset == 0 ? DotQ8_0Exact(start, blocks, x) : DotQ5_0Exact(start, blocks, x);
        float tail = 0;
        for (; b < blocks; b++, row += blockBytes, xq += 32)
            tail = MathF.FusedMultiplyAdd(TailIsum(row, xq, x.BSums + b, offset), Quantization.Fp.ReadHalf(row) * x.D[b], tail);
        return ReducePhases(acc) + tail;
    }

    /// <summary>A block's partial dots: signed levels (offset 0) or unsigned ones (the offset not yet subtracted).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> BlockDot(byte* block, sbyte* xq, int offset) => offset == 0
        ? SignedDot(Vector256.Load((sbyte*)block + 2), Vector256.Load(xq))
        : DotUnsignedSigned(UnsignedLevels(block, offset), Vector256.Load(xq));

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotQ4_0(byte* row, int blocks, in ActivationRow x) => DotQ4_0(row, blocks, x, exactScales: false);

    private static float DotQ4_0Exact(byte* row, int blocks, in ActivationRow x) => DotQ4_0(row, blocks, x, exactScales: true);

    /// <summary>
    /// The packed bytes of two blocks share one register, so one mask and one shift split 64 nibbles, and the low- and
    /// high-nibble byte dots add as int16 before one widening (each is at most 2·15·127). The eight fp16 scales of a
    /// group come as vectors: blocks 2j and 2j+1 start 36j bytes into the group, so one 32-byte load holds the first's
    /// scale in its low half and the second's two bytes into its high half, and a byte shuffle puts them in lane j of
    /// each half; a permute restores block order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float DotQ4_0(byte* row, int blocks, in ActivationRow x, bool exactScales)
    {
        byte* start = row;
        var acc = Vector256<float>.Zero;
        Vector256<uint> magnitudes = default;
        sbyte* xq = x.Qs;
        var blockOrder = Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7);
        int b = 0;
        for (; b + 8 <= blocks; b += 8, row += 8 * Q4BlockBytes, xq += 256)
        {
            var halves = (Avx2.Shuffle(Vector256.Load(row), ScalePick(0))
                | Avx2.Shuffle(Vector256.Load(row + 2 * Q4BlockBytes), ScalePick(1))
                | Avx2.Shuffle(Vector256.Load(row + 4 * Q4BlockBytes), ScalePick(2))
                | Avx2.Shuffle(Vector256.Load(row + 6 * Q4BlockBytes), ScalePick(3))).AsInt32();
            halves = Avx2.PermuteVar8x32(halves, blockOrder);
            var dw = exactScales ? HalfToSingle(halves.AsUInt32()) : FiniteHalves(halves, ref magnitudes);
            // lanes 0–3: partial sums of block 2j, lanes 4–7: of block 2j+1
            var p0 = NibblePairDot(row, xq);
            var p1 = NibblePairDot(row + 2 * Q4BlockBytes, xq + 64);
            var p2 = NibblePairDot(row + 4 * Q4BlockBytes, xq + 128);
            var p3 = NibblePairDot(row + 6 * Q4BlockBytes, xq + 192);
            // (b0, b2, b4, b6 | b1, b3, b5, b7), then block order
            var isum = Avx2.PermuteVar8x32(Avx2.HorizontalAdd(Avx2.HorizontalAdd(p0, p1), Avx2.HorizontalAdd(p2, p3)), blockOrder);
            isum -= Avx2.ConvertToVector256Int32(x.BSums + b) << 3;
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum), dw * Vector256.Load(x.D + b), acc);
        }
        if (!exactScales && Vector256.GreaterThanOrEqualAny(magnitudes, Vector256.Create(HalfInfOrNanShifted)))
            return DotQ4_0Exact(start, blocks, x);
        float tail = 0;
        for (; b < blocks; b++, row += Q4BlockBytes, xq += 32)
            tail = MathF.FusedMultiplyAdd(TailIsum(row, xq, x.BSums + b, offset: 8), Quantization.Fp.ReadHalf(row) * x.D[b], tail);
        return ReducePhases(acc) + tail;
    }

    /// <summary>Byte shuffle taking bytes 0–1 of the low half to lane j and bytes 2–3 of the high half to lane j + 4 (zeros elsewhere).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> ScalePick(int j)
    {
        var low = Vector128.Create((byte)0x80);
        var high = Vector128.Create((byte)0x80);
        low = low.WithElement(4 * j, (byte)0).WithElement(4 * j + 1, (byte)1);
        high = high.WithElement(4 * j, (byte)2).WithElement(4 * j + 1, (byte)3);
        return Vector256.Create(low, high);
    }

    /// <summary>Partial dots of two consecutive Q4_0 blocks (lanes 0–3 the first, 4–7 the second) with their 64 activation levels.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> NibblePairDot(byte* pair, sbyte* xq)
    {
        var packed = Vector256.Create(Vector128.Load(pair + 2), Vector128.Load(pair + 2 + Q4BlockBytes));
        var mask = Vector256.Create((byte)0x0F);
        var low = packed & mask;
        var high = Avx2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & mask;
        var xLow = Vector256.Create(Vector128.Load(xq), Vector128.Load(xq + 32));
        var xHigh = Vector256.Create(Vector128.Load(xq + 16), Vector128.Load(xq + 48));
        if (AvxVnni.IsSupported)
            return AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, low, xLow), high, xHigh);
        return Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(low, xLow) + Avx2.MultiplyAddAdjacent(high, xHigh), Vector256.Create((short)1));
    }

    // ---- eight rows × any number of tokens ----

    /// <summary>
    /// y[t·yStride + r] for the eight rows at <paramref name="rows"/> and every token: the rows are transposed into
    /// <paramref name="scratch"/> (<see cref="TileBytesPerBlock"/> per block) once, then each token runs over them.
    /// Token t's activations: qs + t·32·blocks, d + t·blocks (and Q4_0's block sums at sums + t·blocks).
    /// </summary>
    public static void TileQ8_0(byte* rows, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Tile(rows, rowBytes, blocks, qs, d, sums, tokens, y, yStride, scratch, offset: 0);

    public static void TileQ4_0(byte* rows, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Tile(rows, rowBytes, blocks, qs, d, sums, tokens, y, yStride, scratch, offset: 8);

    public static void TileQ5_0(byte* rows, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Tile(rows, rowBytes, blocks, qs, d, sums, tokens, y, yStride, scratch, offset: 16);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile(byte* rows, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch, int offset)
    {
        int blockBytes = offset switch { 0 => Q8BlockBytes, 8 => Q4BlockBytes, _ => Q5BlockBytes };
        var rowOffsets = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * (int)rowBytes;
        for (int b = 0; b < blocks; b++)
        {
            byte* block = rows + b * blockBytes;
            byte* destination = scratch + b * TileBytesPerBlock;
            StoreTransposed(destination, 32, (float*)(destination + 256), block, rowOffsets,
                TileLevels(block, offset), TileLevels(block + rowBytes, offset),
                TileLevels(block + 2 * rowBytes, offset), TileLevels(block + 3 * rowBytes, offset),
                TileLevels(block + 4 * rowBytes, offset), TileLevels(block + 5 * rowBytes, offset),
                TileLevels(block + 6 * rowBytes, offset), TileLevels(block + 7 * rowBytes, offset));
        }
        RunTile(blocks, qs, d, sums, tokens, y, yStride, scratch, offset, next: null);
    }

    /// <summary>
    /// As <see cref="TileQ8_0"/> for sixteen rows in 512-bit registers (the AVX-512 path): the same per-row results.
    /// Q4_0/Q5_0 scratch per block (<see cref="WideTileBytesPerBlock"/>): group g of rows 0–7 and then of rows 8–15 at
    /// 64·g, the sixteen scales at 512. Q8_0's rows are transposed the same way and then widened into int16 pairs
    /// (<see cref="WideTileQ8BytesPerBlock"/>, see <see cref="RunWideTileQ8_0"/>).
    /// </summary>
    public static void WideTileQ8_0(byte* rows, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch)
    {
        var rowOffsets = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * (int)rowBytes;
        byte* groups = stackalloc byte[WideTileBytesPerBlock];
        for (int b = 0; b < blocks; b++)
        {
            byte* destination = scratch + (long)b * WideTileQ8BytesPerBlock;
            for (int half = 0; half < 2; half++)
            {
                byte* block = rows + half * TileRows * rowBytes + b * Q8BlockBytes;
                StoreTransposed(groups + 32 * half, 64, (float*)(destination + 1024) + TileRows * half, block, rowOffsets,
                    TileLevels(block, 0), TileLevels(block + rowBytes, 0),
                    TileLevels(block + 2 * rowBytes, 0), TileLevels(block + 3 * rowBytes, 0),
                    TileLevels(block + 4 * rowBytes, 0), TileLevels(block + 5 * rowBytes, 0),
                    TileLevels(block + 6 * rowBytes, 0), TileLevels(block + 7 * rowBytes, 0));
            }
            for (int k = 0; k < 8; k++)
                StoreWidePairs(Vector256.Load((sbyte*)groups + 64 * k), Vector256.Load((sbyte*)groups + 64 * k + 32), destination + 128 * k);
        }
        RunWideTileQ8_0(blocks, qs, d, tokens, y, yStride, scratch, next: null);
    }

    public static void WideTileQ4_0(byte* rows, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        WideTile(rows, rowBytes, blocks, qs, d, sums, tokens, y, yStride, scratch, offset: 8);

    public static void WideTileQ5_0(byte* rows, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        WideTile(rows, rowBytes, blocks, qs, d, sums, tokens, y, yStride, scratch, offset: 16);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WideTile(byte* rows, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch, int offset)
    {
        int blockBytes = offset switch { 0 => Q8BlockBytes, 8 => Q4BlockBytes, _ => Q5BlockBytes };
        var rowOffsets = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * (int)rowBytes;
        for (int b = 0; b < blocks; b++)
        {
            byte* destination = scratch + b * WideTileBytesPerBlock;
            for (int half = 0; half < 2; half++)
            {
                byte* block = rows + half * TileRows * rowBytes + b * blockBytes;
                StoreTransposed(destination + 32 * half, 64, (float*)(destination + 512) + TileRows * half, block, rowOffsets,
                    TileLevels(block, offset), TileLevels(block + rowBytes, offset),
                    TileLevels(block + 2 * rowBytes, offset), TileLevels(block + 3 * rowBytes, offset),
                    TileLevels(block + 4 * rowBytes, offset), TileLevels(block + 5 * rowBytes, offset),
                    TileLevels(block + 6 * rowBytes, offset), TileLevels(block + 7 * rowBytes, offset));
            }
        }
        RunWideTile(blocks, qs, d, sums, tokens, y, yStride, scratch, offset, next: null);
    }

    /// <summary>
    /// Every token over a sixteen-row Q4_0/Q5_0 tile already in <paramref name="scratch"/> (<see cref="WideTileBytesPerBlock"/>
    /// per block); the next tile's rows, when <paramref name="next"/> is given, are fetched into L2 during the first two
    /// tokens (see <see cref="RunWideTileQ8_0"/>).
    /// </summary>
    /// <remarks><paramref name="offset"/>: the unsigned levels' offset (Q4_0 8, Q5_0 16).</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void RunWideTile(int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch, int offset, byte* next)
    {
        int share = WideTileRows * (offset == 8 ? Q4BlockBytes : Q5BlockBytes);
        int cols = 32 * blocks;
        int t = 0;
        // tokens in pairs: each tile vector is loaded once for two
        for (; t + 2 <= tokens; t += 2)
        {
            var first = new WideToken(qs + (long)t * cols, d + (long)t * blocks, sums + (long)t * blocks);
            var second = new WideToken(qs + (long)(t + 1) * cols, d + (long)(t + 1) * blocks, sums + (long)(t + 1) * blocks);
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
            int b = 0;
            byte* fetch = t == 0 ? next : null;
            for (; b + 8 <= blocks; b += 8)
            {
                WideTileBlockPair(scratch, b, first, second, offset, fetch, share, ref a0, ref c0);
                WideTileBlockPair(scratch, b + 1, first, second, offset, fetch, share, ref a1, ref c1);
                WideTileBlockPair(scratch, b + 2, first, second, offset, fetch, share, ref a2, ref c2);
                WideTileBlockPair(scratch, b + 3, first, second, offset, fetch, share, ref a3, ref c3);
                WideTileBlockPair(scratch, b + 4, first, second, offset, fetch, share, ref a4, ref c4);
                WideTileBlockPair(scratch, b + 5, first, second, offset, fetch, share, ref a5, ref c5);
                WideTileBlockPair(scratch, b + 6, first, second, offset, fetch, share, ref a6, ref c6);
                WideTileBlockPair(scratch, b + 7, first, second, offset, fetch, share, ref a7, ref c7);
            }
            Vector512<float> tail0 = default, tail1 = default;
            for (; b < blocks; b++) WideTileBlockPair(scratch, b, first, second, offset, fetch, share, ref tail0, ref tail1);
            ((((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))) + tail0).Store(y + (long)t * yStride);
            ((((c0 + c4) + (c2 + c6)) + ((c1 + c5) + (c3 + c7))) + tail1).Store(y + (long)(t + 1) * yStride);
        }
        for (; t < tokens; t++)
        {
            sbyte* xq = qs + (long)t * cols;
            float* dx = d + (long)t * blocks;
            short* xs = sums + (long)t * blocks;
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            int b = 0;
            for (; b + 8 <= blocks; b += 8)
            {
                a0 = WideTileBlock(scratch, b, xq, dx, xs, offset, a0);
                a1 = WideTileBlock(scratch, b + 1, xq, dx, xs, offset, a1);
                a2 = WideTileBlock(scratch, b + 2, xq, dx, xs, offset, a2);
                a3 = WideTileBlock(scratch, b + 3, xq, dx, xs, offset, a3);
                a4 = WideTileBlock(scratch, b + 4, xq, dx, xs, offset, a4);
                a5 = WideTileBlock(scratch, b + 5, xq, dx, xs, offset, a5);
                a6 = WideTileBlock(scratch, b + 6, xq, dx, xs, offset, a6);
                a7 = WideTileBlock(scratch, b + 7, xq, dx, xs, offset, a7);
            }
            var tail = Vector512<float>.Zero;
            for (; b < blocks; b++) tail = WideTileBlock(scratch, b, xq, dx, xs, offset, tail);
            ((((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))) + tail).Store(y + (long)t * yStride);
        }
    }

    /// <summary>One block of a sixteen-row Q4_0/Q5_0 tile against one token (see <see cref="ScratchBlocks"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> WideTileBlock(byte* scratch, int b, sbyte* xq, float* dx, short* xs, int offset, Vector512<float> acc)
    {
        var g = scratch + b * WideTileBytesPerBlock;
        var x = (int*)(xq + 32 * b);
        var ones = Vector512.Create((short)1);
        // the same int16 pair sums as the 256-bit tile (at most 2·31·127 each, four or eight of them)
        var s = Avx512BW.MultiplyAddAdjacent(Vector512.Load(g), Vector512.Create(x[0]).AsSByte())
            + Avx512BW.MultiplyAddAdjacent(Vector512.Load(g + 64), Vector512.Create(x[1]).AsSByte())
            + Avx512BW.MultiplyAddAdjacent(Vector512.Load(g + 128), Vector512.Create(x[2]).AsSByte())
            + Avx512BW.MultiplyAddAdjacent(Vector512.Load(g + 192), Vector512.Create(x[3]).AsSByte());
        var u = Avx512BW.MultiplyAddAdjacent(Vector512.Load(g + 256), Vector512.Create(x[4]).AsSByte())
            + Avx512BW.MultiplyAddAdjacent(Vector512.Load(g + 320), Vector512.Create(x[5]).AsSByte())
            + Avx512BW.MultiplyAddAdjacent(Vector512.Load(g + 384), Vector512.Create(x[6]).AsSByte())
            + Avx512BW.MultiplyAddAdjacent(Vector512.Load(g + 448), Vector512.Create(x[7]).AsSByte());
        var isum = offset == 8 ? Avx512BW.MultiplyAddAdjacent(s + u, ones) : Avx512BW.MultiplyAddAdjacent(s, ones) + Avx512BW.MultiplyAddAdjacent(u, ones);
        isum -= Vector512.Create(offset * xs[b]);
        var scale = Vector512.Load((float*)(g + 512)) * Vector512.Create(dx[b]);
        return Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(isum), scale, acc);
    }

    /// <summary>One token's quantized activations for the wide tile: levels, block scales and block sums.</summary>
    private readonly struct WideToken(sbyte* qs, float* d, short* sums)
    {
        public readonly sbyte* Qs = qs;
        public readonly float* D = d;
        public readonly short* Sums = sums;
    }

    /// <summary>One block of a sixteen-row Q4_0/Q5_0 tile against two tokens: for each, exactly the integers and float steps of <see cref="WideTileBlock"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WideTileBlockPair(byte* scratch, int b, in WideToken first, in WideToken second, int offset, byte* fetch, int share,
        ref Vector512<float> acc0, ref Vector512<float> acc1)
    {
        var g = scratch + b * WideTileBytesPerBlock;
        FetchShare(fetch, b, share);
        var x0 = (int*)(first.Qs + 32 * b);
        var x1 = (int*)(second.Qs + 32 * b);
        var ones = Vector512.Create((short)1);
        // written out: the JIT does not unroll these loops
        Vector512<short> s0 = default, u0 = default, s1 = default, u1 = default;
        UnsignedGroupPair(g, 0, x0, x1, ref s0, ref s1);
        UnsignedGroupPair(g, 1, x0, x1, ref s0, ref s1);
        UnsignedGroupPair(g, 2, x0, x1, ref s0, ref s1);
        UnsignedGroupPair(g, 3, x0, x1, ref s0, ref s1);
        UnsignedGroupPair(g, 4, x0, x1, ref u0, ref u1);
        UnsignedGroupPair(g, 5, x0, x1, ref u0, ref u1);
        UnsignedGroupPair(g, 6, x0, x1, ref u0, ref u1);
        UnsignedGroupPair(g, 7, x0, x1, ref u0, ref u1);
        var isum0 = offset == 8 ? Avx512BW.MultiplyAddAdjacent(s0 + u0, ones) : Avx512BW.MultiplyAddAdjacent(s0, ones) + Avx512BW.MultiplyAddAdjacent(u0, ones);
        var isum1 = offset == 8 ? Avx512BW.MultiplyAddAdjacent(s1 + u1, ones) : Avx512BW.MultiplyAddAdjacent(s1, ones) + Avx512BW.MultiplyAddAdjacent(u1, ones);
        isum0 -= Vector512.Create(offset * first.Sums[b]);
        isum1 -= Vector512.Create(offset * second.Sums[b]);
        var scales = Vector512.Load((float*)(g + 512));
        acc0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(isum0), scales * Vector512.Create(first.D[b]), acc0);
        acc1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(isum1), scales * Vector512.Create(second.D[b]), acc1);
    }

    /// <summary>Group <paramref name="k"/> of a Q4_0/Q5_0 wide tile block (unsigned levels) against two tokens' bytes 4k..4k+3.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void UnsignedGroupPair(byte* tileBlock, int k, int* x0, int* x1, ref Vector512<short> s0, ref Vector512<short> s1)
    {
        var levels = Vector512.Load(tileBlock + 64 * k);
        s0 += Avx512BW.MultiplyAddAdjacent(levels, Vector512.Create(x0[k]).AsSByte());
        s1 += Avx512BW.MultiplyAddAdjacent(levels, Vector512.Create(x1[k]).AsSByte());
    }

    // Q8_0's signed levels meet signed activations: without VNNI an int8 formulation spends a sign fix-up (AVX-512 has
    // no vpsignb) and a widening multiply per 64 products beside the byte multiply. As int16 pairs the products need
    // one vpmaddwd and one add per 32 and nothing else, which Zen 4's vector pipes retire faster (the tile is widened
    // once and serves every token; each token's block levels are widened once per block). The integer block sums are
    // exact either way, so every row's result keeps its bits.

    /// <summary>
    /// Two groups of eight rows' levels 4k..4k+3 (lane r of <paramref name="low"/> row r, of <paramref name="high"/> row
    /// 8 + r) as the pair vectors 2k and 2k+1 of a Q8_0 wide tile block at <paramref name="destination"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void StoreWidePairs(Vector256<sbyte> low, Vector256<sbyte> high, byte* destination)
    {
        // int32 lanes 2r and 2r+1: row r's levels (4k, 4k+1) and (4k+2, 4k+3)
        var lowRows = Avx512BW.ConvertToVector512Int16(low).AsInt32();
        var highRows = Avx512BW.ConvertToVector512Int16(high).AsInt32();
        var even = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        Avx512F.PermuteVar16x32x2(lowRows, even, highRows).Store((int*)destination);
        Avx512F.PermuteVar16x32x2(lowRows, even + Vector512<int>.One, highRows).Store((int*)(destination + 64));
    }

    /// <summary>
    /// Every token over a sixteen-row Q8_0 tile already in <paramref name="scratch"/> (<see cref="WideTileQ8BytesPerBlock"/>
    /// per block), with the blocks' float steps and phase tree of the one-token kernel. When <paramref name="next"/> is
    /// given, the next tile's sixteen rows (contiguous from there, <see cref="Q8BlockBytes"/> per row and block) are
    /// fetched into L2 during the first two tokens, spread over the blocks: the tile is compute bound, and its weights
    /// would otherwise be read from memory while nothing else runs (two threads, 8 and 32 sequences: +10–30%).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void RunWideTileQ8_0(int blocks, sbyte* qs, float* d, int tokens, float* y, int yStride, byte* scratch, byte* next)
    {
        int cols = 32 * blocks;
        // the current block's activation levels as int16, 32 per token
        short* levels = stackalloc short[64];
        int t = 0;
        for (; t + 2 <= tokens; t += 2)
        {
            sbyte* x0 = qs + (long)t * cols, x1 = x0 + cols;
            float* d0 = d + (long)t * blocks, d1 = d0 + blocks;
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
            int b = 0;
            byte* fetch = t == 0 ? next : null;
            for (; b + 8 <= blocks; b += 8)
            {
                Q8BlockPair(scratch, b, x0, x1, d0, d1, levels, fetch, ref a0, ref c0);
                Q8BlockPair(scratch, b + 1, x0, x1, d0, d1, levels, fetch, ref a1, ref c1);
                Q8BlockPair(scratch, b + 2, x0, x1, d0, d1, levels, fetch, ref a2, ref c2);
                Q8BlockPair(scratch, b + 3, x0, x1, d0, d1, levels, fetch, ref a3, ref c3);
                Q8BlockPair(scratch, b + 4, x0, x1, d0, d1, levels, fetch, ref a4, ref c4);
                Q8BlockPair(scratch, b + 5, x0, x1, d0, d1, levels, fetch, ref a5, ref c5);
                Q8BlockPair(scratch, b + 6, x0, x1, d0, d1, levels, fetch, ref a6, ref c6);
                Q8BlockPair(scratch, b + 7, x0, x1, d0, d1, levels, fetch, ref a7, ref c7);
            }
            Vector512<float> tail0 = default, tail1 = default;
            for (; b < blocks; b++) Q8BlockPair(scratch, b, x0, x1, d0, d1, levels, fetch, ref tail0, ref tail1);
            ((((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))) + tail0).Store(y + (long)t * yStride);
            ((((c0 + c4) + (c2 + c6)) + ((c1 + c5) + (c3 + c7))) + tail1).Store(y + (long)(t + 1) * yStride);
        }
        if (t < tokens)
        {
            sbyte* x = qs + (long)t * cols;
            float* dx = d + (long)t * blocks;
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            int b = 0;
            for (; b + 8 <= blocks; b += 8)
            {
                a0 = Q8Block(scratch, b, x, dx, levels, a0);
                a1 = Q8Block(scratch, b + 1, x, dx, levels, a1);
                a2 = Q8Block(scratch, b + 2, x, dx, levels, a2);
                a3 = Q8Block(scratch, b + 3, x, dx, levels, a3);
                a4 = Q8Block(scratch, b + 4, x, dx, levels, a4);
                a5 = Q8Block(scratch, b + 5, x, dx, levels, a5);
                a6 = Q8Block(scratch, b + 6, x, dx, levels, a6);
                a7 = Q8Block(scratch, b + 7, x, dx, levels, a7);
            }
            var tail = Vector512<float>.Zero;
            for (; b < blocks; b++) tail = Q8Block(scratch, b, x, dx, levels, tail);
            ((((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))) + tail).Store(y + (long)t * yStride);
        }
    }

    /// <summary>Block <paramref name="b"/> of a Q8_0 wide tile against two tokens: acc += float(isum)·(scale_w·d_x) per row lane, for each.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q8BlockPair(byte* scratch, int b, sbyte* x0, sbyte* x1, float* d0, float* d1, short* levels, byte* fetch,
        ref Vector512<float> acc0, ref Vector512<float> acc1)
    {
        var g = scratch + (long)b * WideTileQ8BytesPerBlock;
        // this block's share of the next tile (an in-process A/B found spreading it over all token pairs no better)
        const int share = WideTileRows * Q8BlockBytes;
        FetchShare(fetch, b, share);
        Avx512BW.ConvertToVector512Int16(Vector256.Load(x0 + 32 * b)).Store(levels);
        Avx512BW.ConvertToVector512Int16(Vector256.Load(x1 + 32 * b)).Store(levels + 32);
        var p0 = (int*)levels;
        var p1 = (int*)(levels + 32);
        // two partial sums per token keep the add chains short (exact integers: the order does not matter)
        Vector512<int> even0 = default, odd0 = default, even1 = default, odd1 = default;
        PairProducts(g, 0, p0, p1, ref even0, ref even1);
        PairProducts(g, 1, p0, p1, ref odd0, ref odd1);
        PairProducts(g, 2, p0, p1, ref even0, ref even1);
        PairProducts(g, 3, p0, p1, ref odd0, ref odd1);
        PairProducts(g, 4, p0, p1, ref even0, ref even1);
        PairProducts(g, 5, p0, p1, ref odd0, ref odd1);
        PairProducts(g, 6, p0, p1, ref even0, ref even1);
        PairProducts(g, 7, p0, p1, ref odd0, ref odd1);
        PairProducts(g, 8, p0, p1, ref even0, ref even1);
        PairProducts(g, 9, p0, p1, ref odd0, ref odd1);
        PairProducts(g, 10, p0, p1, ref even0, ref even1);
        PairProducts(g, 11, p0, p1, ref odd0, ref odd1);
        PairProducts(g, 12, p0, p1, ref even0, ref even1);
        PairProducts(g, 13, p0, p1, ref odd0, ref odd1);
        PairProducts(g, 14, p0, p1, ref even0, ref even1);
        PairProducts(g, 15, p0, p1, ref odd0, ref odd1);
        var scales = Vector512.Load((float*)(g + 1024));
        acc0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(even0 + odd0), scales * Vector512.Create(d0[b]), acc0);
        acc1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(even1 + odd1), scales * Vector512.Create(d1[b]), acc1);
    }

    /// <summary>Pair vector <paramref name="p"/> of a Q8_0 wide tile block against two tokens' levels 2p, 2p+1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PairProducts(byte* tileBlock, int p, int* x0, int* x1, ref Vector512<int> sum0, ref Vector512<int> sum1)
    {
        var w = Vector512.Load((short*)(tileBlock + 64 * p));
        sum0 += Avx512BW.MultiplyAddAdjacent(w, Vector512.Create(x0[p]).AsInt16());
        sum1 += Avx512BW.MultiplyAddAdjacent(w, Vector512.Create(x1[p]).AsInt16());
    }

    /// <summary>Block <paramref name="b"/> of a Q8_0 wide tile against one token, as <see cref="Q8BlockPair"/> does for each of two.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Q8Block(byte* scratch, int b, sbyte* x, float* dx, short* levels, Vector512<float> acc)
    {
        var g = scratch + (long)b * WideTileQ8BytesPerBlock;
        Avx512BW.ConvertToVector512Int16(Vector256.Load(x + 32 * b)).Store(levels);
        var p = (int*)levels;
        Vector512<int> even = default, odd = default;
        for (int k = 0; k < 16; k += 2)
        {
            even += Avx512BW.MultiplyAddAdjacent(Vector512.Load((short*)(g + 64 * k)), Vector512.Create(p[k]).AsInt16());
            odd += Avx512BW.MultiplyAddAdjacent(Vector512.Load((short*)(g + 64 * k + 64)), Vector512.Create(p[k + 1]).AsInt16());
        }
        var scale = Vector512.Load((float*)(g + 1024)) * Vector512.Create(dx[b]);
        return Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(even + odd), scale, acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> TileLevels(byte* block, int offset) =>
        offset == 0 ? Vector256.Load((int*)(block + 2)) : UnsignedLevels(block, offset).AsInt32();

    /// <summary>Transposes eight rows' levels into eight groups <paramref name="groupStride"/> bytes apart and writes their scales as floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreTransposed(byte* groups, int groupStride, float* scales, byte* block, Vector256<int> rowOffsets,
        Vector256<int> v0, Vector256<int> v1, Vector256<int> v2, Vector256<int> v3,
        Vector256<int> v4, Vector256<int> v5, Vector256<int> v6, Vector256<int> v7)
    {
        Transpose(ref v0, ref v1, ref v2, ref v3, ref v4, ref v5, ref v6, ref v7);
        v0.Store((int*)groups);
        v1.Store((int*)(groups + groupStride));
        v2.Store((int*)(groups + 2 * groupStride));
        v3.Store((int*)(groups + 3 * groupStride));
        v4.Store((int*)(groups + 4 * groupStride));
        v5.Store((int*)(groups + 5 * groupStride));
        v6.Store((int*)(groups + 6 * groupStride));
        v7.Store((int*)(groups + 7 * groupStride));
        var halves = Avx2.GatherVector256((int*)block, rowOffsets, 1).AsUInt32() & Vector256.Create(0xFFFFu);
        HalfToSingle(halves).Store(scales);
    }

    /// <summary>Every token over an eight-row tile already in <paramref name="scratch"/> (<see cref="TileBytesPerBlock"/> per block), fetching <paramref name="next"/> as <see cref="RunPhases"/> does.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void RunTile(int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch, int offset, byte* next) =>
        RunPhases<ScratchBlocks>(scratch, blocks, qs, d, sums, tokens, y, yStride, offset, next);

    /// <summary>Where an eight-row tile's blocks come from, and how one of them meets one token.</summary>
    internal interface IRowLaneBlocks
    {
        /// <summary>acc + float(isum_b)·scale_b·d_x,b for block <paramref name="b"/> of the eight rows at <paramref name="source"/>, per row lane.</summary>
        static abstract Vector256<float> Accumulate(byte* source, int b, sbyte* xq, float* dx, short* xs, int offset, Vector256<float> acc);
    }

    /// <summary>
    /// Every token over eight rows: blocks in full groups of eight feed the eight phase accumulators, the rest a tail
    /// sum, added in the fixed tree every row-lane kernel uses (the one-token kernels' order, for batch invariance).
    /// When <paramref name="next"/> is given (the next group of eight interleaved rows, or a point a fixed distance
    /// ahead in this group's own bytes), the first token's pass fetches from there into L2, block by block, as far as it
    /// reads itself, so later reads find their weights in cache.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void RunPhases<TBlocks>(byte* source, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, int offset, byte* next)
        where TBlocks : struct, IRowLaneBlocks
    {
        int cols = 32 * blocks;
        int share = TileRows * (offset switch { 0 => Q8BlockBytes, 8 => Q4BlockBytes, _ => Q5BlockBytes });
        for (int t = 0; t < tokens; t++)
        {
            byte* fetch = t == 0 ? next : null;
            sbyte* xq = qs + (long)t * cols;
            float* dx = d + (long)t * blocks;
            short* xs = offset != 0 ? sums + (long)t * blocks : null;
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            int b = 0;
            for (; b + 8 <= blocks; b += 8)
            {
                a0 = TBlocks.Accumulate(source, b, xq, dx, xs, offset, a0); FetchShare(fetch, b, share);
                a1 = TBlocks.Accumulate(source, b + 1, xq, dx, xs, offset, a1); FetchShare(fetch, b + 1, share);
                a2 = TBlocks.Accumulate(source, b + 2, xq, dx, xs, offset, a2); FetchShare(fetch, b + 2, share);
                a3 = TBlocks.Accumulate(source, b + 3, xq, dx, xs, offset, a3); FetchShare(fetch, b + 3, share);
                a4 = TBlocks.Accumulate(source, b + 4, xq, dx, xs, offset, a4); FetchShare(fetch, b + 4, share);
                a5 = TBlocks.Accumulate(source, b + 5, xq, dx, xs, offset, a5); FetchShare(fetch, b + 5, share);
                a6 = TBlocks.Accumulate(source, b + 6, xq, dx, xs, offset, a6); FetchShare(fetch, b + 6, share);
                a7 = TBlocks.Accumulate(source, b + 7, xq, dx, xs, offset, a7); FetchShare(fetch, b + 7, share);
            }
            var tail = Vector256<float>.Zero;
            for (; b < blocks; b++)
            {
                tail = TBlocks.Accumulate(source, b, xq, dx, xs, offset, tail);
                FetchShare(fetch, b, share);
            }
            ((((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))) + tail).Store(y + (long)t * yStride);
        }
    }

    /// <summary>
    /// Block b's share of the bytes at <paramref name="fetch"/> into L2, when there is a fetch. One block's worth between
    /// the blocks' arithmetic rather than eight blocks' worth at once: Llama-3.2-1B Q8_0 decode on Zen 3, both ways
    /// alternating in one process, +7–21% at two threads (five runs) and +21% at one; SmolLM2-135M +14%, Qwen2.5-0.5B +7%.
    /// Q4_0's fetch of the next group neither gained nor lost by it; the K-quant kernels' fetch of a super-block at a time,
    /// split the same way, gained 1–2% (inside the noise) and stays as it is.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void FetchShare(byte* fetch, int b, int share)
    {
        if (fetch != null) FetchIntoL2(fetch + (long)b * share, share);
    }

    /// <summary>Blocks transposed into tile scratch: levels as eight 32-byte groups, then eight float scales.</summary>
    private struct ScratchBlocks : IRowLaneBlocks
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Accumulate(byte* scratch, int b, sbyte* xq, float* dx, short* xs, int offset, Vector256<float> acc)
        {
            var g = scratch + b * TileBytesPerBlock;
            var x = (int*)(xq + 32 * b);
            var isum = offset == 0
                ? SignedGroupsDot((sbyte*)g, x)
                : UnsignedGroupsDot(Vector256.Load(g), Vector256.Load(g + 32), Vector256.Load(g + 64), Vector256.Load(g + 96),
                    Vector256.Load(g + 128), Vector256.Load(g + 160), Vector256.Load(g + 192), Vector256.Load(g + 224), x, offset) - Vector256.Create(offset * xs[b]);
            var scale = Vector256.Load((float*)(g + 256)) * Vector256.Create(dx[b]);
            return Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum), scale, acc);
        }
    }

    /// <summary>Σ over the eight groups of eight rows' unsigned levels (Q4_0/Q5_0) times the activation's bytes 4k..4k+3, per row lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> UnsignedGroupsDot(Vector256<byte> g0, Vector256<byte> g1, Vector256<byte> g2, Vector256<byte> g3,
        Vector256<byte> g4, Vector256<byte> g5, Vector256<byte> g6, Vector256<byte> g7, int* x, int offset)
    {
        if (AvxVnni.IsSupported)
        {
            var even = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, g0, Bytes(x[0]));
            var odd = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, g1, Bytes(x[1]));
            even = AvxVnni.MultiplyWideningAndAdd(even, g2, Bytes(x[2]));
            odd = AvxVnni.MultiplyWideningAndAdd(odd, g3, Bytes(x[3]));
            even = AvxVnni.MultiplyWideningAndAdd(even, g4, Bytes(x[4]));
            odd = AvxVnni.MultiplyWideningAndAdd(odd, g5, Bytes(x[5]));
            even = AvxVnni.MultiplyWideningAndAdd(even, g6, Bytes(x[6]));
            odd = AvxVnni.MultiplyWideningAndAdd(odd, g7, Bytes(x[7]));
            return even + odd;
        }
        // four pair sums of at most 2·31·127 each stay within int16 (eight, for Q4_0's 2·15·127)
        var s = Avx2.MultiplyAddAdjacent(g0, Bytes(x[0])) + Avx2.MultiplyAddAdjacent(g1, Bytes(x[1]))
            + Avx2.MultiplyAddAdjacent(g2, Bytes(x[2])) + Avx2.MultiplyAddAdjacent(g3, Bytes(x[3]));
        var u = Avx2.MultiplyAddAdjacent(g4, Bytes(x[4])) + Avx2.MultiplyAddAdjacent(g5, Bytes(x[5]))
            + Avx2.MultiplyAddAdjacent(g6, Bytes(x[6])) + Avx2.MultiplyAddAdjacent(g7, Bytes(x[7]));
        var ones = Vector256.Create((short)1);
        return offset == 8 ? Avx2.MultiplyAddAdjacent(s + u, ones) : Avx2.MultiplyAddAdjacent(s, ones) + Avx2.MultiplyAddAdjacent(u, ones);
    }

    /// <summary>Σ over the eight groups of eight rows' signed Q8_0 levels (32 bytes apart) times the activation's bytes 4k..4k+3, per row lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> SignedGroupsDot(sbyte* groups, int* x) =>
        (SignedGroupDot(groups, 0, x) + SignedGroupDot(groups, 1, x)) + (SignedGroupDot(groups, 2, x) + SignedGroupDot(groups, 3, x))
        + ((SignedGroupDot(groups, 4, x) + SignedGroupDot(groups, 5, x)) + (SignedGroupDot(groups, 6, x) + SignedGroupDot(groups, 7, x)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> SignedGroupDot(sbyte* groups, int k, int* x) =>
        SignedDot(Vector256.Load(groups + 32 * k), Bytes(x[k]));

    /// <summary>Four activation bytes in every 32-bit lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<sbyte> Bytes(int four) => Vector256.Create(four).AsSByte();

    /// <summary>Per-thread tile scratch, grown when a matrix needs more (never per call once warm).</summary>
    [ThreadStatic] private static byte[]? t_scratch;
    [ThreadStatic] private static byte* t_scratchBase;

    /// <summary>Scratch for a tile of <paramref name="blocks"/> 32-blocks.</summary>
    public static byte* Scratch(int blocks) => ScratchBytes((long)blocks * WideTileQ8BytesPerBlock);

    /// <summary>At least <paramref name="size"/> bytes of per-thread scratch, 64-byte aligned.</summary>
    public static byte* ScratchBytes(long size)
    {
        int bytes = checked((int)size + 64);
        if (t_scratch is null || t_scratch.Length < bytes)
        {
            t_scratch = GC.AllocateUninitializedArray<byte>(bytes, pinned: true);
            nint start = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(t_scratch));
            t_scratchBase = (byte*)((start + 63) & ~(nint)63);
        }
        return t_scratchBase;
    }
}
