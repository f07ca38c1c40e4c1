using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Loom.Core.Quantization;

namespace Loom.Core.Kernels;

/// <summary>
/// Q8_0, Q4_0 and Q5_0 weights reorganised in place, eight rows at a time, into the row-lane order of the tile kernels
/// (<see cref="RowLaneKernels"/>), so that a one-token product needs no horizontal adds, scale gathers or nibble
/// reordering, and many tokens need no transposition: each 32-bit lane of a vector is one row. The layout takes
/// exactly the bytes of the eight rows it replaces. Q4_K and Q6_K have their own layout and kernels
/// (<see cref="InterleavedKQuantKernels"/>), reached through the same entry points.
/// </summary>
/// <remarks>
/// Per block of the eight rows (<c>8 × block bytes</c>, blocks one after the other):
/// <list type="bullet">
/// <item>Q8_0: eight 32-byte vectors, lane r of vector k holding row r's levels 4k..4k+3 (tile group k);</item>
/// <item>Q4_0/Q5_0: four 32-byte vectors v_k (k = 0..3): lane r holds row r's packed bytes 4k..4k+3. Their low nibbles
/// are the levels of elements 4k..4k+3 (tile group k), their high nibbles those of elements 16+4k.. (group k+4);</item>
/// <item>Q5_0 only: a 32-byte bit plane: bit k of byte i of lane r is row r's fifth bit of element 4k+i (group k);</item>
/// <item>the eight rows' fp16 scales.</item>
/// </list>
/// Every row's integer block sums and float operations are those of the tile and one-token kernels, so results are
/// bit-identical to the original layout's (tests check it). Scales must be finite (checked before reorganising).
/// </remarks>
internal static unsafe class InterleavedKernels
{
    /// <summary>Rows reorganised together.</summary>
    public const int GroupRows = 8;

    private const int NibbleBytes = 128, PlaneBytes = 32, LevelBytes = 256;

    public static bool Supports(GgmlType type) => type is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q5_0 || InterleavedKQuantKernels.Supports(type);

    /// <summary>Bytes one block of a group occupies (eight blocks of the type).</summary>
    private static int GroupBlockBytes(GgmlType type) => GroupRows * GgmlTypeInfo.BlockBytes(type);

    /// <summary>The unsigned levels' offset the kernels take away (Q4_0 8, Q5_0 16), or 0 for Q8_0's signed levels.</summary>
    private static int Offset(GgmlType type) => type switch { GgmlType.Q4_0 => 8, GgmlType.Q5_0 => 16, _ => 0 };

    private static int ScalesAt(GgmlType type) => ScalesAt(Offset(type));

    // Inlined on purpose: in the batch pass, a call here made the JIT store the eight integer sums around it on every block.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int ScalesAt(int offset) => offset switch { 0 => LevelBytes, 8 => NibbleBytes, _ => NibbleBytes + PlaneBytes };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int GroupBlockBytes(int offset) => GroupRows * offset switch { 0 => 34, 8 => 18, _ => 22 };

    /// <summary>Where a block's levels start (after the fp16 scale, and Q5_0's fifth bits).</summary>
    private static int LevelsAt(GgmlType type) => type switch { GgmlType.Q5_0 => 6, _ => 2 };

    /// <summary>32-bit words of levels per block row: eight signed bytes groups for Q8_0, four packed ones for the nibble types.</summary>
    private static int LevelWords(GgmlType type) => type == GgmlType.Q8_0 ? 8 : 4;

    /// <summary>
    /// Whether every block scale of the rows is finite (the interleaved kernels convert scales without an Inf/NaN path).
    /// </summary>
    public static bool ScalesFinite(GgmlType type, byte* data, long rows, int blocks)
    {
        if (InterleavedKQuantKernels.Supports(type)) return InterleavedKQuantKernels.ScalesFinite(type, data, rows, blocks);
        int blockBytes = GgmlTypeInfo.BlockBytes(type);
        long count = rows * blocks;
        for (long i = 0; i < count; i++)
            if ((*(ushort*)(data + i * blockBytes) & 0x7C00) == 0x7C00) return false;
        return true;
    }

    /// <summary>Reorganises <paramref name="rows"/> (a multiple of eight) rows in place; <paramref name="buffer"/> holds eight rows.</summary>
    public static void Interleave(GgmlType type, byte* data, int rows, int blocks, byte* buffer)
    {
        int blockBytes = GgmlTypeInfo.BlockBytes(type), groupBlockBytes = GroupBlockBytes(type);
        long rowBytes = (long)blocks * blockBytes;
        for (long g = 0; g < rows / GroupRows; g++)
        {
            byte* group = data + g * GroupRows * rowBytes;
            Buffer.MemoryCopy(group, buffer, GroupRows * rowBytes, GroupRows * rowBytes);
            for (int b = 0; b < blocks; b++)
            {
                byte* destination = group + (long)b * groupBlockBytes;
                for (int r = 0; r < GroupRows; r++)
                    InterleaveBlock(type, buffer + r * rowBytes + (long)b * blockBytes, destination, r);
            }
        }
    }

    /// <summary>Writes row <paramref name="lane"/> of a group back in the type's own layout (for look-ups and the portable path).</summary>
    public static void DeinterleaveRow(GgmlType type, byte* group, int blocks, int lane, byte* row)
    {
        int blockBytes = GgmlTypeInfo.BlockBytes(type), groupBlockBytes = GroupBlockBytes(type);
        for (int b = 0; b < blocks; b++)
            DeinterleaveBlock(type, group + (long)b * groupBlockBytes, lane, row + (long)b * blockBytes);
    }

    private static void InterleaveBlock(GgmlType type, byte* block, byte* destination, int lane)
    {
        if (InterleavedKQuantKernels.Supports(type))
        {
            InterleavedKQuantKernels.InterleaveBlock(type, block, destination, lane);
            return;
        }
        int scalesAt = ScalesAt(type);
        *(ushort*)(destination + scalesAt + 2 * lane) = *(ushort*)block;
        byte* qs = block + LevelsAt(type);
        for (int k = 0; k < LevelWords(type); k++)
            *(uint*)(destination + 32 * k + 4 * lane) = *(uint*)(qs + 4 * k);
        if (type != GgmlType.Q5_0) return;
        uint qh = *(uint*)(block + 2);
        uint plane = 0;
        for (int k = 0; k < 8; k++)
            for (int i = 0; i < 4; i++)
                plane |= ((qh >> (4 * k + i)) & 1u) << (8 * i + k);
        *(uint*)(destination + NibbleBytes + 4 * lane) = plane;
    }

    private static void DeinterleaveBlock(GgmlType type, byte* source, int lane, byte* block)
    {
        if (InterleavedKQuantKernels.Supports(type))
        {
            InterleavedKQuantKernels.DeinterleaveBlock(type, source, lane, block);
            return;
        }
        *(ushort*)block = *(ushort*)(source + ScalesAt(type) + 2 * lane);
        byte* qs = block + LevelsAt(type);
        for (int k = 0; k < LevelWords(type); k++)
            *(uint*)(qs + 4 * k) = *(uint*)(source + 32 * k + 4 * lane);
        if (type != GgmlType.Q5_0) return;
        uint plane = *(uint*)(source + NibbleBytes + 4 * lane), qh = 0;
        for (int k = 0; k < 8; k++)
            for (int i = 0; i < 4; i++)
                qh |= ((plane >> (8 * i + k)) & 1u) << (4 * k + i);
        *(uint*)(block + 2) = qh;
    }

    /// <summary>
    /// The kernel for a call of <paramref name="tokens"/> tokens on interleaved weights, with the tile kernels' signature
    /// (rows = the first group of the tile, rowBytes = the type's row size). It computes <see cref="RowsPerCall"/> rows.
    /// Null on the portable path, which rebuilds each row (<see cref="DeinterleaveRow"/>) for its one-token kernel.
    /// </summary>
    public static delegate*<byte*, long, int, sbyte*, float*, short*, int, float*, int, byte*, void> Select(GgmlType type, KernelIsa isa, int tokens) => isa switch
    {
        _ when InterleavedKQuantKernels.Supports(type) => InterleavedKQuantKernels.Select(type, isa, tokens),
        KernelIsa.Portable => null,
        KernelIsa.Avx512 when tokens >= WideTileMinTokens(type) => type switch
        {
            GgmlType.Q8_0 => &WideTileQ8_0,
            GgmlType.Q4_0 => &WideTileQ4_0,
            _ => &WideTileQ5_0,
        },
        // on the 256-bit path Q8_0 and Q4_0 need no tile scratch: tokens run straight from the weights, several per pass
        _ when type != GgmlType.Q5_0 && tokens >= PassMinTokens => type == GgmlType.Q8_0 ? &PassesQ8_0 : &PassesQ4_0,
        _ when tokens >= MatMulJob.TileMinTokens => &TileQ5_0,
        _ => type switch
        {
            GgmlType.Q8_0 => isa == KernelIsa.Avx512 && !KernelIsaSupport.IntelCpu ? &DirectQ8_0 : &DirectQ8_0FetchingAhead,
            GgmlType.Q4_0 => &DirectQ4_0,
            _ => &DirectQ5_0,
        },
    };

    /// <summary>The eight-row kernel of the same call (for a tail group when <see cref="Select"/>'s kernel takes sixteen).</summary>
    public static delegate*<byte*, long, int, sbyte*, float*, short*, int, float*, int, byte*, void> SelectGroup(GgmlType type, KernelIsa isa, int tokens) => isa switch
    {
        KernelIsa.Portable => null,
        _ when type == GgmlType.Q8_0 => &DirectQ8_0,
        _ when type == GgmlType.Q4_0 => &DirectQ4_0,
        _ => Select(type, KernelIsa.Avx2, tokens),
    };

    /// <summary>Rows one call of <see cref="Select"/>'s kernel computes.</summary>
    public static int RowsPerCall(GgmlType type, KernelIsa isa, int tokens) => isa switch
    {
        KernelIsa.Portable => GroupRows,
        _ when InterleavedKQuantKernels.Supports(type) => GroupRows,
        KernelIsa.Avx512 when tokens >= WideTileMinTokens(type) => RowLaneKernels.WideTileRows,
        _ when type != GgmlType.Q5_0 && tokens >= PassMinTokens => PassRows,
        _ => GroupRows,
    };

    /// <summary>
    /// From this many tokens on, the AVX-512 path takes sixteen-row tiles. Unpacking interleaved levels costs far less
    /// than transposing GGML rows, so Q4_0 and Q5_0 gain from 8 tokens (Zen 4, one thread: Q4_0 +3%, Q5_0 +5–10%).
    /// Q8_0's int16 tile widens every level it unpacks, which only many tokens repay: against the 256-bit passes of
    /// <see cref="PassesQ8_0"/> (in-process A/B, two threads, SmolLM2 / Qwen2.5-0.5B / Llama-3.2-1B shapes) it is
    /// 0% / −7% / −11% at 8 sequences, about even at 12 and 16, and +10% / +7% / +7% at 32.
    /// </summary>
    private static int WideTileMinTokens(GgmlType type) => type == GgmlType.Q8_0 ? 16 : MatMulJob.TileMinTokens;

    // ---- few tokens: straight from the interleaved weights ----

    /// <summary>
    /// How far ahead of its own reads the Q8_0 one-token kernel asks for weights into L2 (the hardware prefetcher alone
    /// left it near two thirds of the read rate). Zen 3 (256-bit path), decode with and without it alternating every
    /// 16–32 tokens in one process: SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B Q8_0 gained 1–13% at two threads and
    /// 8–16% at one (1, 2 and 4 KiB all gained); Q4_K_M files, whose output head is Q8_0, 4–7%. Intel Xeon (512-bit
    /// path), the same three shapes at two threads: 2 KiB gained 18–20% over none, 4 KiB 7–13% over 2 KiB, 6–12 KiB no
    /// more. Q4_0 and Q5_0 fetch the next group instead, which measured better for them than a fixed distance. AMD's
    /// 512-bit path runs without it until measured there (on Zen 4 a fetch made the F16 kernel slower).
    /// </summary>
    private static readonly int Q8FetchAheadBytes = KernelIsaSupport.IntelCpu ? 4096 : 2048;

    // an eight-row group left over by the sixteen-row kernels, or one token on AMD's AVX-512 path
    private static void DirectQ8_0(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Direct(group, blocks, qs, d, sums, tokens, y, yStride, offset: 0, next: null);

    // one token on the 256-bit path, and on Intel's 512-bit path
    private static void DirectQ8_0FetchingAhead(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Direct(group, blocks, qs, d, sums, tokens, y, yStride, offset: 0, next: group + Q8FetchAheadBytes);

    /// <summary>From this many tokens on, Q8_0 and Q4_0 run sixteen rows and several tokens per pass over the weights (<see cref="Passes"/>), unless the AVX-512 wide tiles take them.</summary>
    private const int PassMinTokens = 2;

    /// <summary>Rows <see cref="Passes"/> computes: two interleaved groups.</summary>
    private const int PassRows = 2 * GroupRows;

    private static void PassesQ8_0(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Passes(group, rowBytes, blocks, qs, d, sums, tokens, y, yStride, offset: 0);

    private static void PassesQ4_0(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Passes(group, rowBytes, blocks, qs, d, sums, tokens, y, yStride, offset: 8);

    /// <summary>
    /// Two tokens or more straight from the interleaved weights, sixteen rows (two groups) and up to four tokens per
    /// pass: each weight vector is loaded and its levels prepared (Q8_0: magnitudes; Q4_0: nibbles split) once per
    /// pass, and each activation broadcast serves both groups. Zen 4, one thread, 2048 columns from L1: Q8_0 35 G
    /// products/s one token at a time, 45–49 with eight rows and four tokens per pass, 50–52 with sixteen; Q4_0 at 8
    /// tokens 44–54 with the group unpacked into tile scratch, 57–61 in passes (even at 32). A last odd token runs
    /// alone. <paramref name="offset"/>: 0 for Q8_0's signed levels, 8 for Q4_0's unsigned ones.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Passes(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, int offset)
    {
        byte* second = group + GroupRows * rowBytes;
        // batches fetch the next two groups into L2 during the first pass
        byte* next = tokens >= MatMulJob.TileMinTokens ? second + GroupRows * rowBytes : null;
        long cols = 32L * blocks;
        int t = 0;
        for (; t + 4 <= tokens; t += 4, next = null)
            Pass<FourTokens>(group, rowBytes, blocks, qs + t * cols, d + (long)t * blocks, sums + (long)t * blocks, y + (long)t * yStride, yStride, cols, next, offset);
        if (t + 2 <= tokens)
        {
            Pass<TwoTokens>(group, rowBytes, blocks, qs + t * cols, d + (long)t * blocks, sums + (long)t * blocks, y + (long)t * yStride, yStride, cols, next, offset);
            t += 2;
        }
        if (t < tokens)
        {
            short* xs = offset != 0 ? sums + (long)t * blocks : null;
            Direct(group, blocks, qs + t * cols, d + (long)t * blocks, xs, 1, y + (long)t * yStride, yStride, offset, next: null);
            Direct(second, blocks, qs + t * cols, d + (long)t * blocks, xs, 1, y + (long)t * yStride + GroupRows, yStride, offset, next: null);
        }
    }

    /// <summary>Tokens one <see cref="Pass"/> computes together.</summary>
    private interface ITokenCount { static abstract int Count { get; } }
    private struct TwoTokens : ITokenCount { public static int Count => 2; }
    private struct FourTokens : ITokenCount { public static int Count => 4; }

    /// <summary>
    /// <typeparamref name="TCount"/> consecutive tokens over two groups (<paramref name="low"/> rows 0–7,
    /// the group <paramref name="rowBytes"/>·8 on rows 8–15). Every row's integer block sums and float steps are those of
    /// <see cref="InterleavedBlocks"/>; the phase accumulators (eight and the tail, per token and group) live in memory,
    /// since the sixteen registers hold the pass's integer sums and prepared weights.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining), SkipLocalsInit]
    private static void Pass<TCount>(byte* low, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, float* y, int yStride, long cols, byte* next, int offset)
        where TCount : struct, ITokenCount
    {
        const int slots = 9, tail = 8;
        int count = 2 * TCount.Count;
        var acc = stackalloc Vector256<float>[2 * 4 * slots];
        for (int i = 0; i < count * slots; i++) acc[i] = Vector256<float>.Zero;
        int share = GroupBlockBytes(offset), full = blocks & ~7, scalesAt = ScalesAt(offset);
        long groupBytes = GroupRows * rowBytes;
        byte* high = low + groupBytes;
        for (int b = 0; b < blocks; b++)
        {
            if (next != null && (b & 7) == 0)
            {
                long bytes = (long)Math.Min(8, blocks - b) * share;
                SimdHelpers.FetchIntoL2(next + (long)b * share, bytes);
                SimdHelpers.FetchIntoL2(next + groupBytes + (long)b * share, bytes);
            }
            byte* lowBlock = low + (long)b * share, highBlock = high + (long)b * share;
            var x0 = (int*)(qs + 32L * b);
            int* x1 = x0 + cols / 4, x2 = x1 + cols / 4, x3 = x2 + cols / 4;
            Vector256<int> l0, l1, l2 = default, l3 = default, h0, h1, h2 = default, h3 = default;
            if (offset == 0)
            {
                l0 = l1 = h0 = h1 = default;
                for (int k = 0; k < 8; k++)
                {
                    var wl = Vector256.Load((sbyte*)lowBlock + 32 * k);
                    var wh = Vector256.Load((sbyte*)highBlock + 32 * k);
                    var ml = Avx2.Abs(wl).AsByte();
                    var mh = Avx2.Abs(wh).AsByte();
                    var x = RowLaneKernels.Bytes(x0[k]);
                    l0 = AddSignedDot(l0, ml, wl, x);
                    h0 = AddSignedDot(h0, mh, wh, x);
                    x = RowLaneKernels.Bytes(x1[k]);
                    l1 = AddSignedDot(l1, ml, wl, x);
                    h1 = AddSignedDot(h1, mh, wh, x);
                    if (TCount.Count == 4)
                    {
                        x = RowLaneKernels.Bytes(x2[k]);
                        l2 = AddSignedDot(l2, ml, wl, x);
                        h2 = AddSignedDot(h2, mh, wh, x);
                        x = RowLaneKernels.Bytes(x3[k]);
                        l3 = AddSignedDot(l3, ml, wl, x);
                        h3 = AddSignedDot(h3, mh, wh, x);
                    }
                }
            }
            else
            {
                // eight pair sums of at most 2·15·127 each stay within int16
                Vector256<short> sl0 = default, sl1 = default, sl2 = default, sl3 = default, sh0 = default, sh1 = default, sh2 = default, sh3 = default;
                for (int k = 0; k < 4; k++)
                {
                    var packedLow = Vector256.Load(lowBlock + 32 * k);
                    var packedHigh = Vector256.Load(highBlock + 32 * k);
                    Vector256<byte> lowFirst = packedLow & Vector256.Create((byte)0x0F), lowSecond = High(packedLow);
                    Vector256<byte> highFirst = packedHigh & Vector256.Create((byte)0x0F), highSecond = High(packedHigh);
                    var first = RowLaneKernels.Bytes(x0[k]);
                    var second = RowLaneKernels.Bytes(x0[k + 4]);
                    sl0 += NibbleDot(lowFirst, lowSecond, first, second);
                    sh0 += NibbleDot(highFirst, highSecond, first, second);
                    first = RowLaneKernels.Bytes(x1[k]);
                    second = RowLaneKernels.Bytes(x1[k + 4]);
                    sl1 += NibbleDot(lowFirst, lowSecond, first, second);
                    sh1 += NibbleDot(highFirst, highSecond, first, second);
                    if (TCount.Count == 4)
                    {
                        first = RowLaneKernels.Bytes(x2[k]);
                        second = RowLaneKernels.Bytes(x2[k + 4]);
                        sl2 += NibbleDot(lowFirst, lowSecond, first, second);
                        sh2 += NibbleDot(highFirst, highSecond, first, second);
                        first = RowLaneKernels.Bytes(x3[k]);
                        second = RowLaneKernels.Bytes(x3[k + 4]);
                        sl3 += NibbleDot(lowFirst, lowSecond, first, second);
                        sh3 += NibbleDot(highFirst, highSecond, first, second);
                    }
                }
                l0 = Widen(sl0, offset * sums[b]);
                h0 = Widen(sh0, offset * sums[b]);
                l1 = Widen(sl1, offset * sums[blocks + b]);
                h1 = Widen(sh1, offset * sums[blocks + b]);
                if (TCount.Count == 4)
                {
                    l2 = Widen(sl2, offset * sums[2 * blocks + b]);
                    h2 = Widen(sh2, offset * sums[2 * blocks + b]);
                    l3 = Widen(sl3, offset * sums[3 * blocks + b]);
                    h3 = Widen(sh3, offset * sums[3 * blocks + b]);
                }
            }
            // scales were checked finite before interleaving
            var scaleLow = RowLaneKernels.FiniteHalfScales(Avx2.ConvertToVector256Int32((ushort*)(lowBlock + scalesAt)));
            var scaleHigh = RowLaneKernels.FiniteHalfScales(Avx2.ConvertToVector256Int32((ushort*)(highBlock + scalesAt)));
            var slot = acc + (b < full ? (b & 7) : tail);
            AccumulateBlock(slot, l0, h0, scaleLow, scaleHigh, d[b]);
            AccumulateBlock(slot + 2 * slots, l1, h1, scaleLow, scaleHigh, d[blocks + b]);
            if (TCount.Count == 4)
            {
                AccumulateBlock(slot + 4 * slots, l2, h2, scaleLow, scaleHigh, d[2 * blocks + b]);
                AccumulateBlock(slot + 6 * slots, l3, h3, scaleLow, scaleHigh, d[3 * blocks + b]);
            }
        }
        // the phase tree of RunPhases; sum s is token s / 2, group s mod 2
        for (int s = 0; s < count; s++)
        {
            var a = acc + s * slots;
            ((((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))) + a[tail]).Store(y + (long)(s >> 1) * yStride + GroupRows * (s & 1));
        }
    }

    /// <summary>A group's Q4_0 products of tile groups k and k + 4 (nibbles split) with a token's activation bytes 4k.. and 16 + 4k.., as int16 pair sums.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> NibbleDot(Vector256<byte> first, Vector256<byte> second, Vector256<sbyte> x, Vector256<sbyte> y) =>
        Avx2.MultiplyAddAdjacent(first, x) + Avx2.MultiplyAddAdjacent(second, y);

    /// <summary>A block's int16 pair sums widened to one int32 per row lane, less the offset times the activation block sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Widen(Vector256<short> pairs, int correction) =>
        Avx2.MultiplyAddAdjacent(pairs, Vector256.Create((short)1)) - Vector256.Create(correction);

    /// <summary>One token's block term for both groups: slot[0] (rows 0–7) and slot[9] (rows 8–15) += float(isum)·(scale·d_x).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AccumulateBlock(Vector256<float>* slot, Vector256<int> low, Vector256<int> high, Vector256<float> scaleLow, Vector256<float> scaleHigh, float dx)
    {
        var x = Vector256.Create(dx);
        slot[0] = Fma.MultiplyAdd(Avx.ConvertToVector256Single(low), scaleLow * x, slot[0]);
        slot[9] = Fma.MultiplyAdd(Avx.ConvertToVector256Single(high), scaleHigh * x, slot[9]);
    }

    /// <summary>sum + the integer dot of a tile group's signed levels <paramref name="w"/> (magnitudes given) with four activation bytes in every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> AddSignedDot(Vector256<int> sum, Vector256<byte> magnitudes, Vector256<sbyte> w, Vector256<sbyte> x)
    {
        var signed = Avx2.Sign(x, w);
        if (AvxVnni.IsSupported) return AvxVnni.MultiplyWideningAndAdd(sum, magnitudes, signed);
        return sum + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(magnitudes, signed), Vector256.Create((short)1));
    }

    // Q4_0 and Q5_0 fetch the next group into L2 as they go (Zen 3, from memory, times the GGML layout's rate: Q4_0 two
    // threads 1.07-1.13 -> 1.24-1.31; Q5_0 one thread 1.33-1.48 -> 1.71-1.82, two threads 1.28-1.44 -> 1.48-1.58);
    // Q8_0 gained nothing from it
    private static void DirectQ4_0(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Direct(group, blocks, qs, d, sums, tokens, y, yStride, offset: 8, next: group + GroupRows * rowBytes);

    private static void DirectQ5_0(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Direct(group, blocks, qs, d, sums, tokens, y, yStride, offset: 16, next: group + GroupRows * rowBytes);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Direct(byte* group, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, int offset, byte* next) =>
        RowLaneKernels.RunPhases<InterleavedBlocks>(group, blocks, qs, d, sums, tokens, y, yStride, offset, next);

    /// <summary>Blocks read straight from the interleaved weights: the tile kernels' integer sums and float steps, per row lane.</summary>
    private struct InterleavedBlocks : RowLaneKernels.IRowLaneBlocks
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Accumulate(byte* group, int b, sbyte* xq, float* dx, short* xs, int offset, Vector256<float> acc)
        {
            byte* block = group + b * GroupBlockBytes(offset);
            var x = (int*)(xq + 32 * b);
            Vector256<int> isum;
            if (offset == 0)
                isum = RowLaneKernels.SignedGroupsDot((sbyte*)block, x);
            else if (offset == 8)
                isum = NibbleGroupsDot(block, x) - Vector256.Create(8 * xs[b]);
            else
            {
                var mask = Vector256.Create((byte)0x0F);
                var v0 = Vector256.Load(block);
                var v1 = Vector256.Load(block + 32);
                var v2 = Vector256.Load(block + 64);
                var v3 = Vector256.Load(block + 96);
                Vector256<byte> l0 = v0 & mask, l1 = v1 & mask, l2 = v2 & mask, l3 = v3 & mask;
                Vector256<byte> h0 = High(v0), h1 = High(v1), h2 = High(v2), h3 = High(v3);
                if (offset == 16)
                {
                    var plane = Vector256.Load(block + NibbleBytes).AsUInt16();
                    var fifth = Vector256.Create((byte)0x10);
                    l0 |= (plane << 4).AsByte() & fifth;
                    l1 |= (plane << 3).AsByte() & fifth;
                    l2 |= (plane << 2).AsByte() & fifth;
                    l3 |= (plane << 1).AsByte() & fifth;
                    h0 |= plane.AsByte() & fifth;
                    h1 |= (plane >> 1).AsByte() & fifth;
                    h2 |= (plane >> 2).AsByte() & fifth;
                    h3 |= (plane >> 3).AsByte() & fifth;
                }
                isum = RowLaneKernels.UnsignedGroupsDot(l0, l1, l2, l3, h0, h1, h2, h3, x, offset) - Vector256.Create(offset * xs[b]);
            }
            // scales were checked finite before interleaving
            var scale = RowLaneKernels.FiniteHalfScales(Avx2.ConvertToVector256Int32((ushort*)(block + ScalesAt(offset)))) * Vector256.Create(dx[b]);
            return Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum), scale, acc);
        }
    }

    /// <summary>
    /// <see cref="RowLaneKernels.UnsignedGroupsDot"/> for Q4_0's nibbles, each packed vector split just before its two
    /// products: with all eight nibble vectors made first, the 256-bit path (sixteen registers, eight of them the
    /// phase sums) spilled them on every block and ran at 0.8 of this from cache on Zen 3. Same integers, same order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> NibbleGroupsDot(byte* block, int* x)
    {
        var mask = Vector256.Create((byte)0x0F);
        if (AvxVnni.IsSupported)
            return RowLaneKernels.UnsignedGroupsDot(Vector256.Load(block) & mask, Vector256.Load(block + 32) & mask, Vector256.Load(block + 64) & mask,
                Vector256.Load(block + 96) & mask, High(Vector256.Load(block)), High(Vector256.Load(block + 32)), High(Vector256.Load(block + 64)),
                High(Vector256.Load(block + 96)), x, 8);
        var v = Vector256.Load(block);
        var low = Avx2.MultiplyAddAdjacent(v & mask, RowLaneKernels.Bytes(x[0]));
        var high = Avx2.MultiplyAddAdjacent(High(v), RowLaneKernels.Bytes(x[4]));
        for (int k = 1; k < 4; k++)
        {
            v = Vector256.Load(block + 32 * k);
            low += Avx2.MultiplyAddAdjacent(v & mask, RowLaneKernels.Bytes(x[k]));
            high += Avx2.MultiplyAddAdjacent(High(v), RowLaneKernels.Bytes(x[4 + k]));
        }
        // eight pair sums of at most 2·15·127 stay within int16
        return Avx2.MultiplyAddAdjacent(low + high, Vector256.Create((short)1));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> High(Vector256<byte> packed) => (packed.AsUInt16() >> 4).AsByte() & Vector256.Create((byte)0x0F);

    // ---- many tokens: unpack the group(s) into tile scratch once, then the tile kernels' token loop ----

    private static void TileQ5_0(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch)
    {
        Unpack(group, blocks, 16, scratch, RowLaneKernels.TileBytesPerBlock, 32, 256);
        RowLaneKernels.RunTile(blocks, qs, d, sums, tokens, y, yStride, scratch, offset: 16, next: group + GroupRows * rowBytes);
    }

    private static void WideTileQ8_0(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch)
    {
        int blockBytes = GroupBlockBytes(0);
        byte* second = group + GroupRows * rowBytes;
        for (int b = 0; b < blocks; b++)
        {
            byte* low = group + (long)b * blockBytes, high = second + (long)b * blockBytes;
            byte* destination = scratch + (long)b * RowLaneKernels.WideTileQ8BytesPerBlock;
            for (int k = 0; k < 8; k++)
                RowLaneKernels.StoreWidePairs(Vector256.Load((sbyte*)low + 32 * k), Vector256.Load((sbyte*)high + 32 * k), destination + 128 * k);
            StoreScales(low, 0, (float*)(destination + 1024));
            StoreScales(high, 0, (float*)(destination + 1024) + GroupRows);
        }
        RowLaneKernels.RunWideTileQ8_0(blocks, qs, d, tokens, y, yStride, scratch, next: group + 2 * GroupRows * rowBytes);
    }

    private static void WideTileQ4_0(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch)
    {
        UnpackWide(group, rowBytes, blocks, 8, scratch);
        RowLaneKernels.RunWideTile(blocks, qs, d, sums, tokens, y, yStride, scratch, offset: 8, next: group + 2 * GroupRows * rowBytes);
    }

    private static void WideTileQ5_0(byte* group, long rowBytes, int blocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch)
    {
        UnpackWide(group, rowBytes, blocks, 16, scratch);
        RowLaneKernels.RunWideTile(blocks, qs, d, sums, tokens, y, yStride, scratch, offset: 16, next: group + 2 * GroupRows * rowBytes);
    }

    /// <summary>Two consecutive groups into the sixteen-row tile's halves (rows 0–7 at 64·g, rows 8–15 at 64·g + 32, scales at 512 and 544).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void UnpackWide(byte* group, long rowBytes, int blocks, int offset, byte* scratch)
    {
        Unpack(group, blocks, offset, scratch, RowLaneKernels.WideTileBytesPerBlock, 64, 512);
        Unpack(group + GroupRows * rowBytes, blocks, offset, scratch + 32, RowLaneKernels.WideTileBytesPerBlock, 64, 512);
    }

    /// <summary>
    /// A group's levels as eight 32-byte tile groups <paramref name="groupStride"/> apart and its scales as floats at
    /// <paramref name="scalesAt"/>, per block <paramref name="blockStride"/> bytes apart.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Unpack(byte* group, int blocks, int offset, byte* scratch, int blockStride, int groupStride, int scalesAt)
    {
        int groupBlockBytes = GroupBlockBytes(offset);
        var mask = Vector256.Create((byte)0x0F);
        var fifth = Vector256.Create((byte)0x10);
        for (int b = 0; b < blocks; b++)
        {
            byte* source = group + (long)b * groupBlockBytes;
            byte* destination = scratch + (long)b * blockStride;
            if (offset == 0)
            {
                for (int k = 0; k < 8; k++)
                    Vector256.Load(source + 32 * k).Store(destination + groupStride * k);
            }
            else
            {
                var plane = offset == 16 ? Vector256.Load(source + NibbleBytes).AsUInt16() : default;
                for (int k = 0; k < 4; k++)
                {
                    var v = Vector256.Load(source + 32 * k);
                    var low = v & mask;
                    var high = High(v);
                    if (offset == 16)
                    {
                        low |= (plane << (4 - k)).AsByte() & fifth;
                        high |= (plane >> k).AsByte() & fifth;
                    }
                    low.Store(destination + groupStride * k);
                    high.Store(destination + groupStride * (k + 4));
                }
            }
            StoreScales(source, offset, (float*)(destination + scalesAt));
        }
    }

    /// <summary>A group block's eight fp16 scales as floats at <paramref name="destination"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreScales(byte* groupBlock, int offset, float* destination) =>
        SimdHelpers.HalfToSingle(Avx2.ConvertToVector256Int32((ushort*)(groupBlock + ScalesAt(offset))).AsUInt32()).Store(destination);
}
