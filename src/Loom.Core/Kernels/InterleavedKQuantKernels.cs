using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Loom.Core.Quantization;

namespace Loom.Core.Kernels;

/// <summary>
/// Q4_K and Q6_K weights reorganised in place, eight rows at a time, so that each 32-bit lane of a vector is one row
/// (as <see cref="InterleavedKernels"/> does for the 32-element types): a super-block of eight rows is dotted with
/// broadcast activation bytes, its scales unpacked once for all eight, and no horizontal adds are needed.
/// </summary>
/// <remarks>
/// Per super-block of the eight rows (<c>8 × block bytes</c>, super-blocks one after the other), each 4-byte word w of
/// the GGML block's packed part becomes the 32-byte vector w (lane r = row r's word w), followed by the eight rows'
/// fp16 scales, each scale kind in 16 bytes:
/// <list type="bullet">
/// <item>Q4_K: words 0–2 are the packed 6-bit scales and mins, words 3–34 the nibbles (chunk c, word k at 3 + 8c + k);
/// then the eight d and the eight dmin;</item>
/// <item>Q6_K: words 0–3 the signed scales, then per 128-element half and i = 0..7 ql word i, ql word 8 + i and qh
/// word i of that half (see <see cref="BlockOffset"/>); then the eight d.</item>
/// </list>
/// A row's arithmetic, whatever the kernel and token count: per super-block the exact integer sums
/// isum = Σ_j scale_j·Σ level·q (Q6_K: levels − 32) and msum = Σ_j min_j·Σ q (Q4_K), then
/// acc = fma(isum, d·d_x, acc) and mins = fma(msum, dmin·d_x, mins), super-blocks in order, and acc − mins at the end
/// (the float steps of llama.cpp's repacked Q4_K kernels). It differs from the GGML layout's kernels only in rounding; <see cref="DotPortable"/> is the same arithmetic in scalar code.
/// </remarks>
internal static unsafe class InterleavedKQuantKernels
{
    private const int GroupRows = InterleavedKernels.GroupRows;
    private const int Q4KGroupBytes = GroupRows * 144, Q6KGroupBytes = GroupRows * 210;
    private const int Q4KNibblesAt = 96, Q4KScalesAt = 1120, Q4KMinScalesAt = 1136;
    private const int Q6KScalesAt = 0, Q6KLevelsAt = 128, Q6KHalfBytes = 768, Q6KScaleAt = 1664;

    public static bool Supports(GgmlType type) => type is GgmlType.Q4_K or GgmlType.Q6_K;

    /// <summary>Packed 4-byte words per block, and where the fp16 scales are and how many.</summary>
    private static (int Words, int HalvesAt, int Halves) Shape(GgmlType type) => type == GgmlType.Q4_K ? (35, 0, 2) : (52, 208, 1);

    /// <summary>
    /// The GGML block offset of the layout's word <paramref name="w"/>. Q4_K keeps the block's order. Q6_K puts its signed
    /// scales first and then, per 128-element half and per word i, ql word i, ql word 8 + i and qh word i side by side,
    /// in the order the kernel reads them: one stream front to back (three streams a group apart ran at a quarter of
    /// the speed from memory on Zen 4, while equal from cache).
    /// </summary>
    private static int BlockOffset(GgmlType type, int w)
    {
        if (type == GgmlType.Q4_K) return 4 + 4 * w;
        if (w < 4) return 192 + 4 * w;
        int v = w - 4, half = v / 24, i = v % 24 / 3;
        return (v % 3) switch { 0 => 64 * half + 4 * i, 1 => 64 * half + 32 + 4 * i, _ => 128 + 32 * half + 4 * i };
    }

    /// <summary>Whether every fp16 scale (Q4_K: d and dmin, Q6_K: d) is finite; the kernels convert them without an Inf/NaN path.</summary>
    public static bool ScalesFinite(GgmlType type, byte* data, long rows, int superBlocks)
    {
        var shape = Shape(type);
        int blockBytes = GgmlTypeInfo.BlockBytes(type);
        long count = rows * superBlocks;
        for (long i = 0; i < count; i++)
            for (int h = 0; h < shape.Halves; h++)
                if ((*(ushort*)(data + i * blockBytes + shape.HalvesAt + 2 * h) & 0x7C00) == 0x7C00) return false;
        return true;
    }

    public static void InterleaveBlock(GgmlType type, byte* block, byte* destination, int lane) => Move(type, block, destination, lane, toGroup: true);

    public static void DeinterleaveBlock(GgmlType type, byte* source, int lane, byte* block) => Move(type, block, source, lane, toGroup: false);

    /// <summary>Copies row <paramref name="lane"/>'s words and scales between its GGML block and the group's layout.</summary>
    private static void Move(GgmlType type, byte* block, byte* group, int lane, bool toGroup)
    {
        var shape = Shape(type);
        for (int w = 0; w < shape.Words; w++)
        {
            uint* laneWord = (uint*)(group + 32 * w + 4 * lane);
            uint* blockWord = (uint*)(block + BlockOffset(type, w));
            if (toGroup) *laneWord = *blockWord;
            else *blockWord = *laneWord;
        }
        for (int h = 0; h < shape.Halves; h++)
        {
            ushort* laneHalf = (ushort*)(group + 32 * shape.Words + 16 * h + 2 * lane);
            ushort* blockHalf = (ushort*)(block + shape.HalvesAt + 2 * h);
            if (toGroup) *laneHalf = *blockHalf;
            else *blockHalf = *laneHalf;
        }
    }

    /// <summary>
    /// The eight-row kernel for a call of <paramref name="tokens"/> tokens (the tile kernels' signature; sums are the
    /// Q8_K sums of 16), or null on the portable path. From <see cref="TileMinTokens"/> on, the group is unpacked once
    /// into scratch (<see cref="TileBytes"/>) and every token runs over it.
    /// </summary>
    public static delegate*<byte*, long, int, sbyte*, float*, short*, int, float*, int, byte*, void> Select(GgmlType type, KernelIsa isa, int tokens) =>
        isa == KernelIsa.Portable ? null
        : tokens >= TileMinTokens ? (type == GgmlType.Q4_K ? &TileQ4K : &TileQ6K)
        : type == GgmlType.Q4_K ? &GroupQ4K : &GroupQ6K;

    /// <summary>From this many tokens on, unpacking a group once pays for itself (Zen 4, one thread: Q6_K 25% slower at 4 tokens, even at 8, 40% faster at 32).</summary>
    private const int TileMinTokens = 8;

    /// <summary>Scratch one group's unpacked super-blocks take: levels as bytes, scales spread for the multiply-adds, float d (and dmin).</summary>
    public static long TileBytes(int superBlocks) => (long)superBlocks * TileBlockBytes;

    /// <summary>How far ahead of the super-block in hand the one-token kernels ask for the rows (about one Q6_K super-block of the group).</summary>
    private const int PrefetchDistance = 2048;

    private const int TileLevelBytes = 2048, TileBlockBytes = TileLevelBytes + 768 + 64;

    /// <summary>The same arithmetic in scalar code, on a row rebuilt in GGML layout (the portable path).</summary>
    public static delegate*<byte*, int, in ActivationRow, float> PortableDot(GgmlType type) =>
        type == GgmlType.Q4_K ? &DotPortableQ4K : &DotPortableQ6K;

    private static float DotPortableQ4K(byte* row, int superBlocks, in ActivationRow x) => DotPortable(GgmlType.Q4_K, row, superBlocks, x);

    private static float DotPortableQ6K(byte* row, int superBlocks, in ActivationRow x) => DotPortable(GgmlType.Q6_K, row, superBlocks, x);

    private static float DotPortable(GgmlType type, byte* row, int superBlocks, in ActivationRow x)
    {
        int blockBytes = GgmlTypeInfo.BlockBytes(type);
        float acc = 0, mins = 0;
        for (int i = 0; i < superBlocks; i++, row += blockBytes)
        {
            var (isum, msum, d, dmin) = KQuantKernels.IntegerSums(type, row, x.Qs + 256 * i, x.BSums + 16 * i);
            float dx = x.D[i];
            acc = MathF.FusedMultiplyAdd(isum, d * dx, acc);
            if (type == GgmlType.Q4_K) mins = MathF.FusedMultiplyAdd(msum, dmin * dx, mins);
        }
        return acc - mins;
    }

    // ---- eight rows against each token: straight from the layout, or (many tokens) from a group unpacked once ----

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GroupQ4K(byte* group, long rowBytes, int superBlocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Run(GgmlType.Q4_K, tiled: false, group, superBlocks, qs, d, sums, tokens, y, yStride, scratch);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GroupQ6K(byte* group, long rowBytes, int superBlocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Run(GgmlType.Q6_K, tiled: false, group, superBlocks, qs, d, sums, tokens, y, yStride, scratch);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileQ4K(byte* group, long rowBytes, int superBlocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Run(GgmlType.Q4_K, tiled: true, group, superBlocks, qs, d, sums, tokens, y, yStride, scratch);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileQ6K(byte* group, long rowBytes, int superBlocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch) =>
        Run(GgmlType.Q6_K, tiled: true, group, superBlocks, qs, d, sums, tokens, y, yStride, scratch);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Run(GgmlType type, bool tiled, byte* group, int superBlocks, sbyte* qs, float* d, short* sums, int tokens, float* y, int yStride, byte* scratch)
    {
        ref readonly var k = ref Masks;
        int groupBytes = type == GgmlType.Q4_K ? Q4KGroupBytes : Q6KGroupBytes;
        for (int b = 0; tiled && b < superBlocks; b++)
        {
            if (type == GgmlType.Q4_K) UnpackQ4K(group + (long)b * groupBytes, scratch + (long)b * TileBlockBytes, k);
            else UnpackQ6K(group + (long)b * groupBytes, scratch + (long)b * TileBlockBytes, k);
        }
        int cols = 256 * superBlocks;
        if (tiled)
        {
            // tokens in pairs, each unpacked vector loaded once for both (an odd last token is paired with itself)
            for (int t = 0; t < tokens; t += 2)
            {
                int u = Math.Min(t + 1, tokens - 1);
                Vector256<float> acc0 = default, acc1 = default, mins0 = default, mins1 = default;
                // the first pair fetches the next group into L2 (rows are read from memory while the tile computes)
                byte* next = t == 0 ? group + (long)superBlocks * groupBytes : null;
                for (int b = 0; b < superBlocks; b++)
                {
                    if (next != null)
                        SimdHelpers.FetchIntoL2(next + (long)b * groupBytes, groupBytes);
                    var first = new Token(qs + (long)t * cols + 256 * b, d[(long)t * superBlocks + b], sums + (long)t * (cols / 16) + 16 * b);
                    var second = new Token(qs + (long)u * cols + 256 * b, d[(long)u * superBlocks + b], sums + (long)u * (cols / 16) + 16 * b);
                    byte* tile = scratch + (long)b * TileBlockBytes;
                    if (type == GgmlType.Q4_K) TilePairQ4K(tile, first, second, ref acc0, ref acc1, ref mins0, ref mins1);
                    else TilePairQ6K(tile, first, second, ref acc0, ref acc1);
                }
                (acc0 - mins0).Store(y + (long)t * yStride);
                (acc1 - mins1).Store(y + (long)u * yStride);
            }
            return;
        }
        for (int t = 0; t < tokens; t++)
        {
            sbyte* xq = qs + (long)t * cols;
            float* dx = d + (long)t * superBlocks;
            short* bsums = sums + (long)t * (cols / 16);
            Vector256<float> acc = default, mins = default;
            for (int b = 0; b < superBlocks; b++)
            {
                // the first token asks for the super-block 2 KiB ahead into L2: without it the rows streamed from
                // memory at 0.85 of the GGML layout's rate on Zen 3 (which prefetches its rows), with it at 0.96-1.0
                if (t == 0) SimdHelpers.FetchIntoL2(group + (long)b * groupBytes + PrefetchDistance, groupBytes);
                if (type == GgmlType.Q4_K) SuperBlockQ4K(group + (long)b * groupBytes, xq + 256 * b, dx[b], bsums + 16 * b, ref acc, ref mins, k);
                else acc = SuperBlockQ6K(group + (long)b * groupBytes, xq + 256 * b, dx[b], bsums + 16 * b, acc, k);
            }
            (acc - mins).Store(y + (long)t * yStride);
        }
    }

    /// <summary>
    /// Scratch of a Q4_K super-block: levels of sub-block j, word w at 32·(8j + w); at 2048 the eight scales, at 2304 the
    /// eight mins, each spread into both halves of every lane; at 2560 d and at 2592 dmin as floats.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void UnpackQ4K(byte* g, byte* tile, in Constants k)
    {
        var (scales03, scales47, mins03, mins47) = ScalesAndMinsQ4K(g);
        StoreSpread(scales03, scales47, tile + TileLevelBytes, k);
        StoreSpread(mins03, mins47, tile + TileLevelBytes + 256, k);
        byte* nibbles = g + Q4KNibblesAt;
        for (int c = 0; c < 4; c++)
            for (int w = 0; w < 8; w++)
            {
                var v = Vector256.Load(nibbles + 256 * c + 32 * w);
                (v & k.Levels.Low4).Store(tile + 32 * (16 * c + w));
                KQuantKernels.HighNibbles(v).Store(tile + 32 * (16 * c + 8 + w));
            }
        RowLaneKernels.FiniteHalfScales(Avx2.ConvertToVector256Int32((ushort*)(g + Q4KScalesAt))).Store((float*)(tile + TileLevelBytes + 512));
        RowLaneKernels.FiniteHalfScales(Avx2.ConvertToVector256Int32((ushort*)(g + Q4KMinScalesAt))).Store((float*)(tile + TileLevelBytes + 544));
    }

    /// <summary>
    /// The eight rows' 6-bit scales and mins from their three packed words, bytes 0–3 of each lane: scales 0–3 are the low
    /// six bits of word 0, scales 4–7 the low nibbles of word 2 with word 0's top two bits; the mins likewise from words 1 and 2.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector256<uint> Scales03, Vector256<uint> Scales47, Vector256<uint> Mins03, Vector256<uint> Mins47) ScalesAndMinsQ4K(byte* g)
    {
        var a0 = Vector256.Load((uint*)g);
        var a1 = Vector256.Load((uint*)(g + 32));
        var a2 = Vector256.Load((uint*)(g + 64));
        var six = Vector256.Create(0x3F3F3F3Fu);
        var low = Vector256.Create(0x0F0F0F0Fu);
        var top = Vector256.Create(0x30303030u);
        return (a0 & six, (a2 & low) | ((a0 >> 2) & top), a1 & six, ((a2 >> 4) & low) | ((a1 >> 2) & top));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreSpread(Vector256<uint> first4, Vector256<uint> last4, byte* destination, in Constants k)
    {
        Scale(first4, k.Byte0).Store(destination);
        Scale(first4, k.Byte1).Store(destination + 32);
        Scale(first4, k.Byte2).Store(destination + 64);
        Scale(first4, k.Byte3).Store(destination + 96);
        Scale(last4, k.Byte0).Store(destination + 128);
        Scale(last4, k.Byte1).Store(destination + 160);
        Scale(last4, k.Byte2).Store(destination + 192);
        Scale(last4, k.Byte3).Store(destination + 224);
    }

    /// <summary>
    /// One unpacked Q4_K super-block against two tokens (each level vector loaded once for both): for each, the integers
    /// and float steps of <see cref="SuperBlockQ4K"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void TilePairQ4K(byte* tile, Token first, Token second, ref Vector256<float> acc0, ref Vector256<float> acc1,
        ref Vector256<float> mins0, ref Vector256<float> mins1)
    {
        Vector256<int> isum0 = default, isum1 = default, msum0 = default, msum1 = default;
        for (int j = 0; j < 8; j++)
        {
            byte* levels = tile + 256 * j;
            sbyte* x0 = first.X + 32 * j, x1 = second.X + 32 * j;
            // written out: the JIT does not unroll the word loop, whose overhead was a third of its instructions
            Vector256<short> s0 = default, s1 = default;
            WordPair(levels, x0, x1, 0, ref s0, ref s1);
            WordPair(levels, x0, x1, 1, ref s0, ref s1);
            WordPair(levels, x0, x1, 2, ref s0, ref s1);
            WordPair(levels, x0, x1, 3, ref s0, ref s1);
            WordPair(levels, x0, x1, 4, ref s0, ref s1);
            WordPair(levels, x0, x1, 5, ref s0, ref s1);
            WordPair(levels, x0, x1, 6, ref s0, ref s1);
            WordPair(levels, x0, x1, 7, ref s0, ref s1);
            var scale = Vector256.Load((short*)(tile + TileLevelBytes + 32 * j));
            var min = Vector256.Load((short*)(tile + TileLevelBytes + 256 + 32 * j));
            isum0 += Avx2.MultiplyAddAdjacent(s0, scale);
            isum1 += Avx2.MultiplyAddAdjacent(s1, scale);
            msum0 += Avx2.MultiplyAddAdjacent(min, Vector256.Create(*(int*)(first.Sums + 4 * j)).AsInt16());
            msum1 += Avx2.MultiplyAddAdjacent(min, Vector256.Create(*(int*)(second.Sums + 4 * j)).AsInt16());
        }
        var d = Vector256.Load((float*)(tile + TileLevelBytes + 512));
        var dmin = Vector256.Load((float*)(tile + TileLevelBytes + 544));
        acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum0), d * Vector256.Create(first.D), acc0);
        acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum1), d * Vector256.Create(second.D), acc1);
        mins0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(msum0), dmin * Vector256.Create(first.D), mins0);
        mins1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(msum1), dmin * Vector256.Create(second.D), mins1);
    }

    /// <summary>
    /// Scratch of a Q6_K super-block: levels (0..63) of sub-block s (16 elements), word w at 32·(4s + w); at 2048 the
    /// sixteen scales spread into both halves of every lane; at 2560 the scale pairs (2i, 2i+1) for the offset; at 2816 d.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void UnpackQ6K(byte* g, byte* tile, in Constants k)
    {
        for (int q = 0; q < 4; q++)
        {
            var scales = Vector256.Load(g + Q6KScalesAt + 32 * q);
            short* spread = (short*)(tile + TileLevelBytes + 128 * q);
            SignedScale(scales, k.High0).Store(spread);
            SignedScale(scales, k.High1).Store(spread + 16);
            SignedScale(scales, k.High2Of).Store(spread + 32);
            SignedScale(scales, k.High3).Store(spread + 48);
            short* pairs = (short*)(tile + TileLevelBytes + 512 + 64 * q);
            SignedScale(scales, k.Pair01).Store(pairs);
            SignedScale(scales, k.Pair23).Store(pairs + 16);
        }
        for (int n = 0; n < 2; n++)
            for (int i = 0; i < 8; i++)
            {
                byte* words = g + Q6KLevelsAt + Q6KHalfBytes * n + 96 * i;
                var (w1, w2, w3, w4) = KQuantKernels.LevelsQ6K(Vector256.Load(words), Vector256.Load(words + 32), Vector256.Load(words + 64), k.Levels);
                // word i of each 32-element run: sub-block 8n + 2·run + i/4, word i mod 4
                int s = 8 * n + i / 4, w = i % 4;
                w1.Store(tile + 32 * (4 * s + w));
                w2.Store(tile + 32 * (4 * (s + 2) + w));
                w3.Store(tile + 32 * (4 * (s + 4) + w));
                w4.Store(tile + 32 * (4 * (s + 6) + w));
            }
        RowLaneKernels.FiniteHalfScales(Avx2.ConvertToVector256Int32((ushort*)(g + Q6KScaleAt))).Store((float*)(tile + TileLevelBytes + 768));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WordPair(byte* levels, sbyte* x0, sbyte* x1, int w, ref Vector256<short> s0, ref Vector256<short> s1)
    {
        var l = Vector256.Load(levels + 32 * w);
        s0 += Avx2.MultiplyAddAdjacent(l, Bytes(x0 + 4 * w));
        s1 += Avx2.MultiplyAddAdjacent(l, Bytes(x1 + 4 * w));
    }

    /// <summary>One unpacked Q6_K super-block against two tokens: for each, the integers and float steps of <see cref="SuperBlockQ6K"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void TilePairQ6K(byte* tile, Token first, Token second, ref Vector256<float> acc0, ref Vector256<float> acc1)
    {
        Vector256<int> isum0 = default, isum1 = default, offset0 = default, offset1 = default;
        for (int s = 0; s < 16; s++)
        {
            byte* levels = tile + 128 * s;
            sbyte* x0 = first.X + 16 * s, x1 = second.X + 16 * s;
            var scale = Vector256.Load((short*)(tile + TileLevelBytes + 32 * s));
            var l0 = Vector256.Load(levels);
            var l1 = Vector256.Load(levels + 32);
            var l2 = Vector256.Load(levels + 64);
            var l3 = Vector256.Load(levels + 96);
            isum0 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(l0, Bytes(x0)) + Avx2.MultiplyAddAdjacent(l1, Bytes(x0 + 4)), scale)
                + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(l2, Bytes(x0 + 8)) + Avx2.MultiplyAddAdjacent(l3, Bytes(x0 + 12)), scale);
            isum1 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(l0, Bytes(x1)) + Avx2.MultiplyAddAdjacent(l1, Bytes(x1 + 4)), scale)
                + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(l2, Bytes(x1 + 8)) + Avx2.MultiplyAddAdjacent(l3, Bytes(x1 + 12)), scale);
        }
        for (int i = 0; i < 8; i++)
        {
            var pair = Vector256.Load((short*)(tile + TileLevelBytes + 512 + 32 * i));
            offset0 += Avx2.MultiplyAddAdjacent(pair, Vector256.Create(*(int*)(first.Sums + 4 * i)).AsInt16());
            offset1 += Avx2.MultiplyAddAdjacent(pair, Vector256.Create(*(int*)(second.Sums + 4 * i)).AsInt16());
        }
        var d = Vector256.Load((float*)(tile + TileLevelBytes + 768));
        acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum0 - (offset0 << 5)), d * Vector256.Create(first.D), acc0);
        acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum1 - (offset1 << 5)), d * Vector256.Create(second.D), acc1);
    }

    /// <summary>One token's quantized activations of a super-block: levels, Q8_K scale and sums of 16 (as bytes).</summary>
    private readonly struct Token(sbyte* x, float d, short* sums)
    {
        public readonly sbyte* X = x;
        public readonly float D = d;
        public readonly sbyte* Sums = (sbyte*)sums;
    }

    /// <summary>The kernels' masks, made once (building them per call of eight rows cost more than the arithmetic).</summary>
    private static readonly Constants Masks = new();

    private readonly struct Constants
    {
        /// <summary>The GGML-layout Q6_K kernels' masks: the same level extraction serves both layouts.</summary>
        public readonly KQuantKernels.Q6KConstants Levels = new();
        /// <summary>Byte i of each 32-bit lane into both of its 16-bit halves, zero-extended (Q4_K's unsigned scales and mins).</summary>
        public readonly Vector256<byte> Byte0 = Spread(0, 0, high: false), Byte1 = Spread(1, 0, high: false), Byte2 = Spread(2, 0, high: false), Byte3 = Spread(3, 0, high: false);
        /// <summary>Byte i of each lane into the high byte of both halves (an arithmetic shift then sign-extends: Q6_K's scales).</summary>
        public readonly Vector256<byte> High0 = Spread(0, 0, high: true), High1 = Spread(1, 0, high: true), High2Of = Spread(2, 0, high: true), High3 = Spread(3, 0, high: true);
        /// <summary>Bytes 0, 1 (or 2, 3) of each lane into the high bytes of its two halves.</summary>
        public readonly Vector256<byte> Pair01 = Spread(0, 1, high: true), Pair23 = Spread(2, 1, high: true);

        public Constants() { }

        /// <summary>
        /// A byte shuffle whose 16-bit half j of each 32-bit lane takes that lane's byte <c>first + step·j</c> into its low
        /// byte (<paramref name="high"/> false, the high byte zeroed) or its high byte (the low byte zeroed).
        /// </summary>
        /// <remarks>Only arithmetic on constants, so the JIT folds each mask into one vector constant.</remarks>
        private static Vector256<byte> Spread(uint first, uint step, bool high)
        {
            uint Lane(uint lane)
            {
                uint a = 4 * lane + first, b = a + step;
                return high ? 0x80u | a << 8 | 0x80u << 16 | b << 24 : a | 0x80u << 8 | b << 16 | 0x80u << 24;
            }
            return Vector256.Create(Lane(0), Lane(1), Lane(2), Lane(3), Lane(0), Lane(1), Lane(2), Lane(3)).AsByte();
        }
    }

    /// <summary>Four activation bytes in every 32-bit lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<sbyte> Bytes(sbyte* x) => RowLaneKernels.Bytes(*(int*)x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Scale(Vector256<uint> scales, Vector256<byte> pick) => Avx2.Shuffle(scales.AsByte(), pick);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> SignedScale(Vector256<byte> scales, Vector256<byte> pick) => Avx2.Shuffle(scales, pick).AsInt16() >> 8;

    /// <summary>
    /// One Q4_K super-block of the eight rows against one token. The 6-bit scales and mins are unpacked per lane from the
    /// three packed words; eight nibble dots per 32 elements stay within int16 (8·2·15·127), weighted by their scale in
    /// one multiply-add.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SuperBlockQ4K(byte* g, sbyte* x, float dx, short* bsums, ref Vector256<float> acc, ref Vector256<float> mins, in Constants k)
    {
        var (scales03, scales47, mins03, mins47) = ScalesAndMinsQ4K(g);

        byte* nibbles = g + Q4KNibblesAt;
        var isum = ChunkQ4K(nibbles, x, Scale(scales03, k.Byte0), Scale(scales03, k.Byte1), k)
            + ChunkQ4K(nibbles + 256, x + 64, Scale(scales03, k.Byte2), Scale(scales03, k.Byte3), k)
            + ChunkQ4K(nibbles + 512, x + 128, Scale(scales47, k.Byte0), Scale(scales47, k.Byte1), k)
            + ChunkQ4K(nibbles + 768, x + 192, Scale(scales47, k.Byte2), Scale(scales47, k.Byte3), k);
        // min_j·(bsum_2j + bsum_2j+1): the pair of sums of 16 is one 32-bit word, the min spread into both halves
        var b = (sbyte*)bsums;
        var msum = (MinDot(mins03, k.Byte0, b) + MinDot(mins03, k.Byte1, b + 4)) + (MinDot(mins03, k.Byte2, b + 8) + MinDot(mins03, k.Byte3, b + 12))
            + ((MinDot(mins47, k.Byte0, b + 16) + MinDot(mins47, k.Byte1, b + 20)) + (MinDot(mins47, k.Byte2, b + 24) + MinDot(mins47, k.Byte3, b + 28)));

        var x8 = Vector256.Create(dx);
        var dw = RowLaneKernels.FiniteHalfScales(Avx2.ConvertToVector256Int32((ushort*)(g + Q4KScalesAt)));
        var dm = RowLaneKernels.FiniteHalfScales(Avx2.ConvertToVector256Int32((ushort*)(g + Q4KMinScalesAt)));
        acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum), dw * x8, acc);
        mins = Fma.MultiplyAdd(Avx.ConvertToVector256Single(msum), dm * x8, mins);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> MinDot(Vector256<uint> mins, Vector256<byte> pick, sbyte* sumPair) =>
        Avx2.MultiplyAddAdjacent(Scale(mins, pick).AsInt16(), Vector256.Create(*(int*)sumPair).AsInt16());

    /// <summary>64 elements of a Q4_K super-block: the low nibbles of its eight words are sub-block 2c, the high ones 2c+1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> ChunkQ4K(byte* words, sbyte* x, Vector256<byte> lowScale, Vector256<byte> highScale, in Constants k)
    {
        // written out (the JIT does not unroll the loop)
        Vector256<short> lo = default, hi = default;
        NibbleWord(words, x, 0, ref lo, ref hi, k);
        NibbleWord(words, x, 1, ref lo, ref hi, k);
        NibbleWord(words, x, 2, ref lo, ref hi, k);
        NibbleWord(words, x, 3, ref lo, ref hi, k);
        NibbleWord(words, x, 4, ref lo, ref hi, k);
        NibbleWord(words, x, 5, ref lo, ref hi, k);
        NibbleWord(words, x, 6, ref lo, ref hi, k);
        NibbleWord(words, x, 7, ref lo, ref hi, k);
        return Avx2.MultiplyAddAdjacent(lo, lowScale.AsInt16()) + Avx2.MultiplyAddAdjacent(hi, highScale.AsInt16());
    }

    /// <summary>Word <paramref name="w"/> of a Q4_K chunk: its low nibbles against the first 32 activations, its high ones against the next 32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void NibbleWord(byte* words, sbyte* x, int w, ref Vector256<short> lo, ref Vector256<short> hi, in Constants k)
    {
        var v = Vector256.Load(words + 32 * w);
        lo += Avx2.MultiplyAddAdjacent(v & k.Levels.Low4, Bytes(x + 4 * w));
        hi += Avx2.MultiplyAddAdjacent(KQuantKernels.HighNibbles(v), Bytes(x + 32 + 4 * w));
    }

    /// <summary>
    /// One Q6_K super-block of the eight rows against one token. Levels are 0..63 (stored + 32): two byte dots of 4
    /// elements stay within int16 (2·2·63·127) before the signed scale's multiply-add; the offset comes off as
    /// 32·Σ scale_g·bsum_g.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> SuperBlockQ6K(byte* g, sbyte* x, float dx, short* bsums, Vector256<float> acc, in Constants k)
    {
        // half by half, so that only one half's scales are live: with all sixteen scale vectors at once the 256-bit
        // path (sixteen registers) spilled them to the stack and ran a third slower than the 512-bit one
        var isum = HalfWithOffsetQ6K(g, x, (sbyte*)bsums, 0, k) + HalfWithOffsetQ6K(g, x, (sbyte*)bsums, 1, k);
        var dw = RowLaneKernels.FiniteHalfScales(Avx2.ConvertToVector256Int32((ushort*)(g + Q6KScaleAt)));
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum), dw * Vector256.Create(dx), acc);
    }

    /// <summary>
    /// Half <paramref name="n"/> of a Q6_K super-block (scales 8n..8n+7, elements 128n..): its integer dot, less 32 times
    /// its scales' dot with the activation sums (the levels' offset).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> HalfWithOffsetQ6K(byte* g, sbyte* x, sbyte* bsums, int n, in Constants k)
    {
        var first = Vector256.Load(g + Q6KScalesAt + 64 * n);
        var second = Vector256.Load(g + Q6KScalesAt + 64 * n + 32);
        var b = bsums + 16 * n;
        var offset = (OffsetDot(first, k.Pair01, b) + OffsetDot(first, k.Pair23, b + 4)) + (OffsetDot(second, k.Pair01, b + 8) + OffsetDot(second, k.Pair23, b + 12));
        return HalfQ6K(g + Q6KLevelsAt + n * Q6KHalfBytes, x + 128 * n, first, second, k) - (offset << 5);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> OffsetDot(Vector256<byte> scales, Vector256<byte> pick, sbyte* sumPair) =>
        Avx2.MultiplyAddAdjacent(SignedScale(scales, pick), Vector256.Create(*(int*)sumPair).AsInt16());

    /// <summary>
    /// 128 elements: ql words 0–7 (<paramref name="ql"/>) and 8–15 with qh words 0–7. Element l of the half's first 32
    /// comes from the low nibble of ql word l/4 and qh bits 0–1; +32 from ql words 8.. and bits 2–3; +64 and +96 from the
    /// high nibbles with bits 4–5 and 6–7. Scales: e = sub-blocks 8n+0, 2, 4, 6 (words 0–3), o = 8n+1, 3, 5, 7 (words 4–7).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> HalfQ6K(byte* levels, sbyte* x, Vector256<byte> first, Vector256<byte> second, in Constants k)
    {
        // Loops, not written-out calls: the JIT then cannot stretch common subexpressions across quarters, which kept
        // them on the stack (sixteen registers on the 256-bit path). Words 4-7 take bytes 1 and 3 of each lane's scales:
        // High1 = High0 + 1 and High3 = High2Of + 1 (the zeroing 0x80 bytes stay at or above 0x80).
        Vector256<int> sum = default;
        for (int s = 0; s < 2; s++)
        {
            var shift = Vector256.Create((byte)s);
            Vector256<byte> pickA = k.High0 + shift, pickB = k.High2Of + shift;
            var scales = new QuarterScales(SignedScale(first, pickA), SignedScale(first, pickB), SignedScale(second, pickA), SignedScale(second, pickB));
            for (int j = 0; j < 2; j++) sum += QuarterQ6K(levels, x, 4 * s + 2 * j, scales, k.Levels);
        }
        return sum;
    }

    /// <summary>The signed scales of a quarter's four level kinds, each spread into both halves of every lane.</summary>
    private readonly record struct QuarterScales(Vector256<short> Kind1, Vector256<short> Kind2, Vector256<short> Kind3, Vector256<short> Kind4);

    /// <summary>
    /// Words <paramref name="w"/> and w+1 of the four level kinds, each kind's two words summed in int16 and then scaled.
    /// One kind at a time (1 and 3 share their words, then 2 and 4), its levels rebuilt from reloaded words, so that few
    /// vectors are live at once: with the four kinds of both words in flight the 256-bit path kept its partial sums on
    /// the stack and ran at 0.6 of the GGML layout's speed on Zen 3.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> QuarterQ6K(byte* levels, sbyte* x, int w, in QuarterScales scales, in KQuantKernels.Q6KConstants q)
    {
        // word i: ql word i at 96·i, ql word 8 + i at +32, qh word i at +64
        byte* a = levels + 96 * w, b = a + 96;
        sbyte* xa = x + 4 * w, xb = xa + 4;
        var sum = Avx2.MultiplyAddAdjacent(
            Avx2.MultiplyAddAdjacent(KQuantKernels.LevelQ6K1(Vector256.Load(a), Vector256.Load(a + 64), q), Bytes(xa))
            + Avx2.MultiplyAddAdjacent(KQuantKernels.LevelQ6K1(Vector256.Load(b), Vector256.Load(b + 64), q), Bytes(xb)), scales.Kind1);
        sum += Avx2.MultiplyAddAdjacent(
            Avx2.MultiplyAddAdjacent(KQuantKernels.LevelQ6K3(Vector256.Load(a), Vector256.Load(a + 64), q), Bytes(xa + 64))
            + Avx2.MultiplyAddAdjacent(KQuantKernels.LevelQ6K3(Vector256.Load(b), Vector256.Load(b + 64), q), Bytes(xb + 64)), scales.Kind3);
        sum += Avx2.MultiplyAddAdjacent(
            Avx2.MultiplyAddAdjacent(KQuantKernels.LevelQ6K2(Vector256.Load(a + 32), Vector256.Load(a + 64), q), Bytes(xa + 32))
            + Avx2.MultiplyAddAdjacent(KQuantKernels.LevelQ6K2(Vector256.Load(b + 32), Vector256.Load(b + 64), q), Bytes(xb + 32)), scales.Kind2);
        return sum + Avx2.MultiplyAddAdjacent(
            Avx2.MultiplyAddAdjacent(KQuantKernels.LevelQ6K4(Vector256.Load(a + 32), Vector256.Load(a + 64), q), Bytes(xa + 96))
            + Avx2.MultiplyAddAdjacent(KQuantKernels.LevelQ6K4(Vector256.Load(b + 32), Vector256.Load(b + 64), q), Bytes(xb + 96)), scales.Kind4);
    }
}
