using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Loom.Training;

/// <summary>Arithmetic of the matrix products: fp32, or bf16 inputs with fp32 accumulation (autocast's mixed precision).</summary>
public enum TrainingPrecision
{
    Fp32,
    Bf16,
}

/// <summary>
/// The part of a product that causal attention needs (row m of C and of A belongs to position m). Each element
/// computed is the full product's chain of fused multiply-adds less terms that are exact zeros, so it equals the full
/// product's (the sign of a zero aside); only register tiles and depth ranges that hold nothing but those zeros are skipped.
/// </summary>
internal enum Triangle
{
    /// <summary>The full product.</summary>
    None,
    /// <summary>Only C(m, n) for n ≤ m is wanted: register tiles wholly above the diagonal are skipped, and C is undefined above it.</summary>
    LowerC,
    /// <summary>
    /// C(m, ·) = Σ over k ≤ m. A register tile sums up to its last row's diagonal, so A(m, k) must be zero for
    /// m &lt; k &lt; m + <see cref="MatMul.MaxTileRows"/>; beyond that band A is never multiplied (it may hold anything).
    /// </summary>
    LowerA,
    /// <summary>
    /// C(m, ·) = Σ over k ≥ m. A register tile sums from its first row's diagonal, so A(m, k) must be zero for
    /// m − <see cref="MatMul.MaxTileRows"/> &lt; k &lt; m; below that band A is never multiplied (it may hold anything).
    /// </summary>
    UpperA,
}

/// <summary>Instruction-set paths of the training kernels.</summary>
internal enum TrainingIsa
{
    /// <summary>Plain C#: runs anywhere.</summary>
    Portable,
    /// <summary>256-bit vectors with FMA: a 6 × 16 register tile.</summary>
    Avx2,
    /// <summary>512-bit vectors: an 8 × 32 register tile.</summary>
    Avx512,
}

/// <summary>
/// The matrix products of training, all through one packed, cache-blocked product C (+)= A·B where A and B are read
/// through arbitrary strides (so either may be transposed). B is packed once per call into panels as wide as the
/// register tile, A per thread into panels as tall as it; a register tile then runs fused multiply-adds along k.
/// Every output element is one chain of fused multiply-adds over k in order, starting from 0 (or from C's old value
/// when accumulating), whatever the ISA, tile or thread split: results are bit-identical across thread counts and
/// across the portable, AVX2 and AVX-512 paths.
/// </summary>
public static unsafe class MatMul
{
    // Rows of A packed at a time per thread (a multiple of both tile heights).
    private const int RowBlock = 96;
    // Rows of an operand read together while packing, so that each panel takes its part of a few runs in L1.
    private const int PackRowsOfB = 4, PackRowsOfA = 8;
    /// <summary>The tallest register tile of any path: how far past the diagonal <see cref="Triangle"/>'s products read.</summary>
    internal const int MaxTileRows = 8;
    // Floats in a 64-byte cache line.
    private const int FloatsPerLine = 16;

    [ThreadStatic] private static float[]? _packedB;
    [ThreadStatic] private static float[]? _packedA;

    /// <summary>The path the products take: the widest this CPU runs, or LOOM_KERNEL_ISA (portable, avx2, avx512) when supported.</summary>
    internal static TrainingIsa Isa { get; } = ChooseIsa();

    /// <summary>
    /// Whether this CPU runs the path in hardware; only such a path is chosen. Any path can still be asked for: the
    /// kernels use .NET's portable vector types, which run in software where the CPU lacks them (slowly, with the same
    /// bits), so tests check the AVX-512 path's tiles and packing on CPUs without AVX-512 too.
    /// </summary>
    internal static bool IsSupported(TrainingIsa isa) => isa switch
    {
        TrainingIsa.Portable => true,
        TrainingIsa.Avx2 => Fma.IsSupported && Avx2.IsSupported,
        TrainingIsa.Avx512 => Fma.IsSupported && Avx512F.IsSupported,
        _ => false,
    };

    private static TrainingIsa ChooseIsa()
    {
        var requested = Environment.GetEnvironmentVariable("LOOM_KERNEL_ISA");
        if (Enum.TryParse<TrainingIsa>(requested, ignoreCase: true, out var isa) && Enum.IsDefined(isa) && IsSupported(isa)) return isa;
        return IsSupported(TrainingIsa.Avx512) ? TrainingIsa.Avx512 : IsSupported(TrainingIsa.Avx2) ? TrainingIsa.Avx2 : TrainingIsa.Portable;
    }

    /// <summary>Forward of a linear layer: y[n, o] = Σ_i x[n, i]·w[o, i].</summary>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> y, int tokens, int inputs, int outputs, int threads,
        TrainingPrecision precision = TrainingPrecision.Fp32) =>
        Multiply(x, inputs, 1, w, 1, inputs, y, outputs, tokens, outputs, inputs, accumulate: false, threads, precision);

    /// <summary>Input gradient of a linear layer: dx[n, i] (+)= Σ_o dy[n, o]·w[o, i].</summary>
    public static void BackwardInput(ReadOnlySpan<float> dy, ReadOnlySpan<float> w, Span<float> dx, int tokens, int inputs, int outputs, bool accumulate, int threads,
        TrainingPrecision precision = TrainingPrecision.Fp32) =>
        Multiply(dy, outputs, 1, w, inputs, 1, dx, inputs, tokens, inputs, outputs, accumulate, threads, precision);

    /// <summary>Weight gradient of a linear layer: dw[o, i] += Σ_n dy[n, o]·x[n, i].</summary>
    public static void BackwardWeight(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, Span<float> dw, int tokens, int inputs, int outputs, int threads,
        TrainingPrecision precision = TrainingPrecision.Fp32) =>
        Multiply(dy, 1, outputs, x, inputs, 1, dw, inputs, outputs, inputs, tokens, accumulate: true, threads, precision);

    /// <summary>
    /// Weight gradient of a linear layer whose input was kept as bfloat16 bits (<see cref="ToBf16"/>): the same result,
    /// bit for bit, as the bf16 product from the fp32 input, because that product rounds its inputs to bf16 anyway.
    /// </summary>
    public static void BackwardWeight(ReadOnlySpan<float> dy, ReadOnlySpan<ushort> x, Span<float> dw, int tokens, int inputs, int outputs, int threads) =>
        BackwardWeight(Isa, dy, x, dw, tokens, inputs, outputs, threads);

    internal static void BackwardWeight(TrainingIsa isa, ReadOnlySpan<float> dy, ReadOnlySpan<ushort> x, Span<float> dw, int tokens, int inputs, int outputs, int threads)
    {
        Check(x.Length, Last(tokens, inputs, inputs, 1), nameof(x));
        fixed (ushort* px = x)
            Multiply(isa, dy, 1, outputs, default, inputs, 1, dw, inputs, outputs, inputs, tokens, accumulate: true, threads, TrainingPrecision.Bf16, bHalf: px);
    }

    /// <summary>The bfloat16 bits of each value rounded as <see cref="RoundToBf16"/> does (exact to widen back: shift left 16).</summary>
    public static void ToBf16(ReadOnlySpan<float> source, Span<ushort> target)
    {
        if (target.Length < source.Length) throw new ArgumentException($"target holds {target.Length} values, {source.Length} needed", nameof(target));
        fixed (float* s = source)
        fixed (ushort* t = target)
        {
            int i = 0, count = source.Length;
            if (Vector256.IsHardwareAccelerated)
                for (; i + 16 <= count; i += 16)
                    Vector256.Narrow(RoundBits(Vector256.Load(s + i)) >> 16, RoundBits(Vector256.Load(s + i + 8)) >> 16).Store(t + i);
            for (; i < count; i++) t[i] = (ushort)(BitConverter.SingleToUInt32Bits(RoundToBf16(s[i])) >> 16);
        }
    }

    /// <summary>
    /// c[m·cRow + n] (+)= Σ_k A(m, k)·B(k, n) for m &lt; rows, n &lt; cols, k &lt; depth, with A(m, k) = a[m·aRow + k·aCol]
    /// and B(k, n) = b[k·bRow + n·bCol]. With <see cref="TrainingPrecision.Bf16"/> every A and B element is first rounded
    /// to bfloat16 (to nearest, ties to even) and the products are accumulated in fp32, as PyTorch's autocast does.
    /// </summary>
    public static void Multiply(ReadOnlySpan<float> a, int aRow, int aCol, ReadOnlySpan<float> b, int bRow, int bCol, Span<float> c, int cRow,
        int rows, int cols, int depth, bool accumulate, int threads, TrainingPrecision precision = TrainingPrecision.Fp32) =>
        Multiply(Isa, a, aRow, aCol, b, bRow, bCol, c, cRow, rows, cols, depth, accumulate, threads, precision);

    internal static void Multiply(TrainingIsa isa, ReadOnlySpan<float> a, int aRow, int aCol, ReadOnlySpan<float> b, int bRow, int bCol, Span<float> c, int cRow,
        int rows, int cols, int depth, bool accumulate, int threads, TrainingPrecision precision = TrainingPrecision.Fp32) =>
        Multiply(isa, a, aRow, aCol, b, bRow, bCol, c, cRow, rows, cols, depth, accumulate, threads, precision, bHalf: null);

    /// <summary>As <see cref="Multiply(ReadOnlySpan{float}, int, int, ReadOnlySpan{float}, int, int, Span{float}, int, int, int, int, bool, int, TrainingPrecision)"/>, skipping the <paramref name="triangle"/> the caller does not need.</summary>
    internal static void Multiply(ReadOnlySpan<float> a, int aRow, int aCol, ReadOnlySpan<float> b, int bRow, int bCol, Span<float> c, int cRow,
        int rows, int cols, int depth, bool accumulate, int threads, TrainingPrecision precision, Triangle triangle) =>
        Multiply(Isa, a, aRow, aCol, b, bRow, bCol, c, cRow, rows, cols, depth, accumulate, threads, precision, bHalf: null, triangle);

    /// <summary>As above, on the given path.</summary>
    internal static void Multiply(TrainingIsa isa, ReadOnlySpan<float> a, int aRow, int aCol, ReadOnlySpan<float> b, int bRow, int bCol, Span<float> c, int cRow,
        int rows, int cols, int depth, bool accumulate, int threads, TrainingPrecision precision, Triangle triangle) =>
        Multiply(isa, a, aRow, aCol, b, bRow, bCol, c, cRow, rows, cols, depth, accumulate, threads, precision, bHalf: null, triangle);

    /// <summary>As above, with B read from the bf16 bits at bHalf instead of b when bHalf is not null.</summary>
    private static void Multiply(TrainingIsa isa, ReadOnlySpan<float> a, int aRow, int aCol, ReadOnlySpan<float> b, int bRow, int bCol, Span<float> c, int cRow,
        int rows, int cols, int depth, bool accumulate, int threads, TrainingPrecision precision, ushort* bHalf, Triangle triangle = Triangle.None)
    {
        if (rows < 0 || cols < 0 || depth < 0) throw new ArgumentOutOfRangeException(nameof(rows), $"dimensions {rows}×{cols}×{depth} must not be negative");
        if (rows == 0 || cols == 0) return;
        Check(a.Length, Last(rows, aRow, depth, aCol), nameof(a));
        if (bHalf is null) Check(b.Length, Last(depth, bRow, cols, bCol), nameof(b));
        Check(c.Length, Last(rows, cRow, cols, 1), nameof(c));
        if (depth == 0)
        {
            // An empty sum: zero, or C unchanged when accumulating.
            if (!accumulate)
                for (int m = 0; m < rows; m++) c.Slice(m * cRow, cols).Clear();
            return;
        }
        fixed (float* pa = a, pb = b, pc = c)
        {
            var job = new Job(isa, pa, aRow, aCol, pb, bRow, bCol, pc, cRow, rows, cols, depth, accumulate, precision == TrainingPrecision.Bf16, bHalf, triangle);
            if (isa == TrainingIsa.Portable)
            {
                job.RunPortable();
                return;
            }
            float[] packedB = Grow(ref _packedB, (long)depth * job.PaddedCols);
            fixed (float* pb2 = packedB)
            {
                // Row parts: one row block each where there are at least two per thread (each row block streams all of
                // packed B however the rows are split, so finer parts cost only a hand-off, and a thread that was held
                // up or runs slower takes fewer of them: with three parts per thread, the other thread waited on the
                // last one at the end of most products); else a few tile-aligned parts per thread, each at least a row
                // block tall. The split never changes the result.
                int tiles = (rows + job.TileRows - 1) / job.TileRows;
                long work = (long)rows * cols * depth;
                int blocks = (rows + RowBlock - 1) / RowBlock;
                bool byBlock = blocks >= 2 * threads;
                int parts = threads <= 1 || work < 1 << 16 ? 1 : byBlock ? blocks : Math.Clamp(rows / RowBlock, Math.Min(tiles, threads), 3 * threads);
                if (parts == 1)
                {
                    job.PackB(pb2, 0, job.Panels);
                    job.Run(pb2, 0, rows);
                }
                else
                {
                    // B's panels are packed in parallel too: packed by the calling thread alone, they left the others idle
                    float* shared = pb2;
                    var pool = WorkerPool.Get(threads);
                    int panels = job.Panels, packParts = Math.Min(panels, pool.Threads);
                    pool.For(packParts, p => job.PackB(shared, (int)((long)panels * p / packParts), (int)((long)panels * (p + 1) / packParts)));
                    if (byBlock) pool.For(parts, p => job.Run(shared, p * RowBlock, Math.Min(rows, (p + 1) * RowBlock)));
                    else
                        pool.For(parts, p =>
                            job.Run(shared, (int)((long)tiles * p / parts) * job.TileRows, Math.Min(rows, (int)((long)tiles * (p + 1) / parts) * job.TileRows)));
                }
            }
        }
    }

    private static long Last(int count, int stride, int count2, int stride2) =>
        count == 0 || count2 == 0 ? 0 : (long)(count - 1) * stride + (long)(count2 - 1) * stride2 + 1;

    private static void Check(int length, long needed, string name)
    {
        if (length < needed) throw new ArgumentException($"{name} holds {length} floats, {needed} needed", name);
    }

    private static float[] Grow(ref float[]? buffer, long length)
    {
        if (length > Array.MaxLength) throw new ArgumentException($"a packed operand of {length} floats is too large");
        if (buffer is null || buffer.Length < length) buffer = GC.AllocateUninitializedArray<float>((int)length, pinned: true);
        return buffer;
    }

    /// <summary>x rounded to the nearest bfloat16 (ties to even), kept in a float: its low 16 bits are zero. NaN stays NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float RoundToBf16(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        if (float.IsNaN(x)) return BitConverter.UInt32BitsToSingle(bits | 0x0040_0000);
        return BitConverter.UInt32BitsToSingle((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000);
    }

    /// <summary>Copies count floats, rounded to bfloat16 when asked; the vector part rounds exactly as <see cref="RoundToBf16"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Copy(float* source, float* target, int count, bool bf16)
    {
        // packing copies a tile's width or height (6–32 floats) at a time: a library call per copy cost up to 8% of
        // a weight-gradient product (384 × 384 from 2048 tokens, one thread)
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= count; i += 8)
            {
                var values = Vector256.Load(source + i);
                (bf16 ? RoundBits(values).AsSingle() : values).Store(target + i);
            }
            if (i + 4 <= count)
            {
                var values = Vector128.Load(source + i);
                (bf16 ? RoundBits(values.ToVector256Unsafe()).GetLower().AsSingle() : values).Store(target + i);
                i += 4;
            }
        }
        for (; i < count; i++) target[i] = bf16 ? RoundToBf16(source[i]) : source[i];
    }

    /// <summary>The bits of x rounded as <see cref="RoundToBf16"/> does, eight at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> RoundBits(Vector256<float> x)
    {
        var bits = x.AsUInt32();
        var rounded = (bits + Vector256.Create(0x7FFFu) + ((bits >> 16) & Vector256.Create(1u))) & Vector256.Create(0xFFFF_0000u);
        return Vector256.ConditionalSelect(Vector256.Equals(x, x).AsUInt32(), rounded, bits | Vector256.Create(0x0040_0000u));
    }

    /// <summary>
    /// target[k·targetStride + r] = source[r·sourceStride + k] for lines r &lt; lines (1 to 8, each contiguous along k)
    /// and k &lt; count, rounded to bfloat16 when asked, exactly as <see cref="RoundToBf16"/>: packing's transposition,
    /// 8 × 8 in registers. Each k's store fills eight places (repeating the last line), so with a target stride of 6
    /// it carries two spare values into the next k's place, which that k then overwrites; the last k's spill lands in
    /// the two floats after the panel, so the target must have them to spare.
    /// </summary>
    private static void TransposeInto(float* source, long sourceStride, int lines, int count, float* target, int targetStride, bool bf16)
    {
        int k = 0;
        int last = lines - 1;
        for (; k + 8 <= count; k += 8)
        {
            var r0 = Line(source, 0, k, sourceStride, bf16); var r1 = Line(source, Math.Min(1, last), k, sourceStride, bf16);
            var r2 = Line(source, Math.Min(2, last), k, sourceStride, bf16); var r3 = Line(source, Math.Min(3, last), k, sourceStride, bf16);
            var r4 = Line(source, Math.Min(4, last), k, sourceStride, bf16); var r5 = Line(source, Math.Min(5, last), k, sourceStride, bf16);
            var r6 = Line(source, Math.Min(6, last), k, sourceStride, bf16); var r7 = Line(source, last, k, sourceStride, bf16);
            // pairs interleaved, then quads, then the 128-bit halves swapped into place
            var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1);
            var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
            var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5);
            var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
            var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE);
            var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
            var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE);
            var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
            float* row = target + (long)k * targetStride;
            Avx.Permute2x128(u0, u4, 0x20).Store(row);
            Avx.Permute2x128(u1, u5, 0x20).Store(row + targetStride);
            Avx.Permute2x128(u2, u6, 0x20).Store(row + 2 * targetStride);
            Avx.Permute2x128(u3, u7, 0x20).Store(row + 3 * targetStride);
            Avx.Permute2x128(u0, u4, 0x31).Store(row + 4 * targetStride);
            Avx.Permute2x128(u1, u5, 0x31).Store(row + 5 * targetStride);
            Avx.Permute2x128(u2, u6, 0x31).Store(row + 6 * targetStride);
            Avx.Permute2x128(u3, u7, 0x31).Store(row + 7 * targetStride);
        }
        for (; k < count; k++)
            for (int r = 0; r < lines; r++)
            {
                float value = source[r * sourceStride + k];
                target[(long)k * targetStride + r] = bf16 ? RoundToBf16(value) : value;
            }
    }

    /// <summary>Eight values of line r from k, rounded to bfloat16 when asked.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Line(float* source, int r, int k, long stride, bool bf16)
    {
        var values = Vector256.Load(source + r * stride + k);
        return bf16 ? RoundBits(values).AsSingle() : values;
    }

    /// <summary>Widens count bfloat16 values to floats (exact).</summary>
    private static void Widen(ushort* source, float* target, int count)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 8 <= count; i += 8)
                (Vector256.WidenLower(Vector128.Load(source + i).ToVector256Unsafe()) << 16).AsSingle().Store(target + i);
        for (; i < count; i++) target[i] = Widen(source[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Widen(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    private readonly struct Job(TrainingIsa isa, float* a, int aRow, int aCol, float* b, int bRow, int bCol, float* c, int cRow,
        int rows, int cols, int depth, bool accumulate, bool bf16, ushort* bHalf, Triangle triangle)
    {
        public int TileRows => isa == TrainingIsa.Avx512 ? 8 : 6;
        // Depth of one packed block. A 32-column B panel 256 deep (32 KiB) stays in L2. The 16-column AVX2 kernel runs
        // as fast from L2 and goes 512 deep: the forward products' C tiles, 384 deep there, are then written once
        // instead of stored, reloaded and stored again (6–17% faster on Zen 3).
        private int DepthBlock => isa == TrainingIsa.Avx512 ? 256 : 512;
        private int TileCols => isa == TrainingIsa.Avx512 ? 32 : 16;
        public int PaddedCols => (cols + TileCols - 1) / TileCols * TileCols;

        /// <summary>Column panels of packed B (each as wide as the register tile).</summary>
        public int Panels => PaddedCols / TileCols;

        /// <summary>Each element's chain of FMAs in k order: the reference every vector path reproduces exactly.</summary>
        public void RunPortable()
        {
            for (int m = 0; m < rows; m++)
            for (int n = 0; n < (triangle == Triangle.LowerC ? Math.Min(cols, m + 1) : cols); n++)
            {
                float* target = c + (long)m * cRow + n;
                float sum = accumulate ? *target : 0f;
                int kEnd = triangle == Triangle.LowerA ? Math.Min(depth, m + 1) : depth;
                for (int k = triangle == Triangle.UpperA ? Math.Min(depth, m) : 0; k < kEnd; k++)
                    sum = MathF.FusedMultiplyAdd(Load(a + (long)m * aRow + (long)k * aCol), LoadB((long)k * bRow + (long)n * bCol), sum);
                *target = sum;
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private float Load(float* element) => bf16 ? RoundToBf16(*element) : *element;

        /// <summary>B's element at offset: from the bf16 bits when B is held as bf16.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private float LoadB(long offset) => bHalf is not null ? Widen(bHalf[offset]) : Load(b + offset);

        /// <summary>
        /// Panels [firstPanel, endPanel) of B into depth blocks, each a run of column panels: panel p of the block
        /// starting at k0 holds B(k0..k1, p·w..p·w+w) row by row, w = tile width, zero beyond the last column.
        /// </summary>
        public void PackB(float* packed, int firstPanel, int endPanel)
        {
            int width = TileCols, padded = PaddedCols;
            // Rows contiguous along n: a few rows of B at a time, each panel takes its part of them. Panel by panel
            // over all k, a panel read one cache line per row at the row stride (for rows of 1024 floats every line
            // in the same cache set); row by row over all panels, the panels' writes, 16 KiB apart, did the same.
            int fullEnd = bCol == 1 ? Math.Max(firstPanel, Math.Min(endPanel, cols / width)) : firstPanel;
            for (int k0 = 0; k0 < depth; k0 += DepthBlock)
            {
                int kc = Math.Min(DepthBlock, depth - k0);
                float* block = packed + (long)k0 * padded;
                for (int kk = 0; kk < kc; kk += PackRowsOfB)
                {
                    int kEnd = Math.Min(kk + PackRowsOfB, kc);
                    for (int p = firstPanel; p < fullEnd; p++)
                    for (int k = kk; k < kEnd; k++)
                    {
                        long source = (long)(k0 + k) * bRow + p * width;
                        float* target = block + (long)p * width * kc + k * width;
                        if (bHalf is not null) Widen(bHalf + source, target, width);
                        else Copy(b + source, target, width, bf16);
                    }
                }
                for (int n0 = fullEnd * width; n0 < endPanel * width; n0 += width)
                {
                    float* panel = block + (long)n0 * kc;
                    int valid = Math.Min(width, cols - n0);
                    if (bRow == 1 && valid == width && bHalf is null && Avx.IsSupported)
                    {
                        // Columns contiguous along k (B read transposed): eight columns by eight k at a time.
                        for (int j = 0; j < width; j += 8)
                            TransposeInto(b + (long)k0 + (long)(n0 + j) * bCol, bCol, 8, kc, panel + j, width, bf16);
                        continue;
                    }
                    // Column by column: when B is read transposed each column is a contiguous run.
                    for (int j = 0; j < width; j++)
                    {
                        if (j >= valid)
                        {
                            for (int k = 0; k < kc; k++) panel[k * width + j] = 0f;
                            continue;
                        }
                        long source = (long)k0 * bRow + (long)(n0 + j) * bCol;
                        for (int k = 0; k < kc; k++) panel[k * width + j] = LoadB(source + (long)k * bRow);
                    }
                }
            }
        }

        /// <summary>Rows [first, end) of C: A packed a row block and depth block at a time, then tile by tile.</summary>
        public void Run(float* packedB, int first, int end)
        {
            int height = TileRows, width = TileCols, padded = PaddedCols;
            // two floats to spare after the last panel for TransposeInto's spill
            float[] packedA = Grow(ref _packedA, (long)RowBlock * DepthBlock + 2);
            float* tile = stackalloc float[8 * 32];
            fixed (float* pa = packedA)
            {
                for (int m0 = first; m0 < end; m0 += RowBlock)
                {
                    int mc = Math.Min(RowBlock, end - m0);
                    for (int k0 = 0; k0 < depth; k0 += DepthBlock)
                    {
                        int kc = Math.Min(DepthBlock, depth - k0);
                        bool load = accumulate || k0 > 0;
                        // The part [kFirst, kEnd) of the block's depth that any of its rows sums (see Triangle).
                        int kFirst = triangle == Triangle.UpperA ? Math.Clamp(m0 - k0, 0, kc) : 0;
                        int kEnd = triangle == Triangle.LowerA ? Math.Clamp(m0 + mc - k0, 0, kc) : kc;
                        int packedDepth = Math.Max(0, kEnd - kFirst);
                        if (packedDepth > 0) PackA(pa, m0, mc, k0 + kFirst, packedDepth);
                        float* block = packedB + (long)k0 * padded;
                        int tiles = (mc + height - 1) / height;
                        long panelLines = (long)kc * width / FloatsPerLine;
                        for (int n0 = 0; n0 < cols; n0 += width)
                        {
                            float* panel = block + (long)n0 * kc;
                            float* nextPanel = n0 + width < cols ? panel + (long)kc * width : null;
                            int nValid = Math.Min(width, cols - n0);
                            for (int i = 0, t = 0; i < mc; i += height, t++)
                            {
                                int mValid = Math.Min(height, mc - i);
                                int firstRow = m0 + i;
                                // wholly above the diagonal: not wanted
                                if (triangle == Triangle.LowerC && n0 > firstRow + mValid - 1) continue;
                                // the part of this depth block that the tile's rows sum
                                int kLow = triangle == Triangle.UpperA ? Math.Clamp(firstRow - k0, kFirst, kc) : 0;
                                int kHigh = triangle == Triangle.LowerA ? Math.Clamp(firstRow + mValid - k0, 0, kEnd) : kc;
                                int kSpan = Math.Max(0, kHigh - kLow);
                                float* target = c + (long)firstRow * cRow + n0;
                                float* aPanel = pa + (long)i * packedDepth + (long)(kLow - kFirst) * height;
                                float* bPanel = panel + (long)kLow * width;
                                // While this tile runs, fetch what the next ones will miss on: the next tile's rows of C into
                                // L1 (its stores, or its loads when accumulating, waited on them) and a share of the next
                                // panel of B into L2 (B as a whole outgrows L2). Zen 3, the benchmark model's fifteen
                                // products with and without alternating in one process: 6–9% less time at one and at two
                                // threads. The AVX-512 path takes the same fetches, not measured there.
                                if (i + 2 * height <= mc && nValid == width) FetchTile(target + (long)height * cRow, cRow, height, width);
                                if (nextPanel != null) FetchIntoL2(nextPanel, panelLines * t / tiles, panelLines * (t + 1) / tiles);
                                if (mValid == height && nValid == width) Kernel(aPanel, bPanel, kSpan, target, cRow, load);
                                else
                                {
                                    // Edge tile: through a full-size scratch tile; only its valid part is read and written back.
                                    for (int r = 0; r < mValid; r++)
                                    {
                                        if (load) Copy(target + (long)r * cRow, tile + r * width, nValid, bf16: false);
                                        else new Span<float>(tile + r * width, nValid).Clear();
                                    }
                                    Kernel(aPanel, bPanel, kSpan, tile, width, load: true);
                                    for (int r = 0; r < mValid; r++) Copy(tile + r * width, target + (long)r * cRow, nValid, bf16: false);
                                }
                            }
                        }
                    }
                }
            }
        }

        /// <summary>Every cache line of a tile's rows into L1 (rows need not be aligned to lines). A prefetch never faults.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void FetchTile(float* tile, int stride, int rows, int width)
        {
            if (!Sse.IsSupported) return;
            for (int r = 0; r < rows; r++, tile += stride)
            {
                for (int f = 0; f < width; f += FloatsPerLine) Sse.Prefetch0(tile + f);
                Sse.Prefetch0(tile + width - 1);
            }
        }

        /// <summary>Cache lines [first, end) from <paramref name="start"/> into L2.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void FetchIntoL2(float* start, long first, long end)
        {
            if (!Sse.IsSupported) return;
            for (long line = first; line < end; line++) Sse.Prefetch1(start + line * FloatsPerLine);
        }

        /// <summary>A(m0..m0+mc, k0..k0+kc) as panels of tile height, k-major inside a panel, zero beyond the last row.</summary>
        private void PackA(float* packed, int m0, int mc, int k0, int kc)
        {
            int height = TileRows;
            int i0 = 0;
            if (aRow == 1)
            {
                // A read transposed (the weight gradient's dyᵀ): each k holds the block's rows side by side, so a few
                // k at a time, each full panel takes its part of those runs (as B's rows are packed above).
                int full = mc / height * height;
                for (int kk = 0; kk < kc; kk += PackRowsOfA)
                {
                    int kEnd = Math.Min(kk + PackRowsOfA, kc);
                    for (int i = 0; i < full; i += height)
                    {
                        float* source = a + m0 + i + (long)k0 * aCol, target = packed + (long)i * kc;
                        int k = kk;
                        // Six-row panels: one eight-float store a k, its two spare floats overwritten by the next k's
                        // (packing took 18–28% less time than with four floats and two). Not at A's last rows, where
                        // eight floats would read past A, nor for the panel's last k, whose spare floats would land in
                        // the next panel.
                        if (height == 6 && m0 + i + 8 <= rows)
                            for (int kLast = Math.Min(kEnd, kc - 1); k < kLast; k++)
                            {
                                var values = Vector256.Load(source + (long)k * aCol);
                                (bf16 ? RoundBits(values).AsSingle() : values).Store(target + k * 6);
                            }
                        for (; k < kEnd; k++) Copy(source + (long)k * aCol, target + k * height, height, bf16);
                    }
                }
                i0 = full;
            }
            for (; i0 < mc; i0 += height)
            {
                float* panel = packed + (long)i0 * kc;
                if (aCol == 1 && Avx.IsSupported)
                {
                    // Rows contiguous along k: the panel's rows by eight k at a time. A last, partial panel's spare
                    // rows are left as they come: they only feed the edge tile's rows that are never written back.
                    TransposeInto(a + (long)(m0 + i0) * aRow + k0, aRow, Math.Min(height, mc - i0), kc, panel, height, bf16);
                    continue;
                }
                for (int r = 0; r < height; r++)
                {
                    if (i0 + r >= mc)
                    {
                        for (int k = 0; k < kc; k++) panel[k * height + r] = 0f;
                        continue;
                    }
                    float* source = a + (long)(m0 + i0 + r) * aRow + (long)k0 * aCol;
                    for (int k = 0; k < kc; k++) panel[k * height + r] = Load(source + (long)k * aCol);
                }
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private void Kernel(float* aPanel, float* bPanel, int kc, float* target, int stride, bool load)
        {
            if (isa == TrainingIsa.Avx512) Kernel8x32(aPanel, bPanel, kc, target, stride, load);
            else Kernel6x16(aPanel, bPanel, kc, target, stride, load);
        }
    }

    /// <summary>C[6×16] (+)= A panel · B panel: 12 accumulators, 2 B vectors and a broadcast fill the 16 AVX2 registers.</summary>
    private static void Kernel6x16(float* a, float* b, int kc, float* c, int stride, bool load)
    {
        float* c0 = c, c1 = c0 + stride, c2 = c1 + stride, c3 = c2 + stride, c4 = c3 + stride, c5 = c4 + stride;
        Vector256<float> s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51;
        if (load)
        {
            s00 = Vector256.Load(c0); s01 = Vector256.Load(c0 + 8); s10 = Vector256.Load(c1); s11 = Vector256.Load(c1 + 8);
            s20 = Vector256.Load(c2); s21 = Vector256.Load(c2 + 8); s30 = Vector256.Load(c3); s31 = Vector256.Load(c3 + 8);
            s40 = Vector256.Load(c4); s41 = Vector256.Load(c4 + 8); s50 = Vector256.Load(c5); s51 = Vector256.Load(c5 + 8);
        }
        else s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = s40 = s41 = s50 = s51 = default;
        for (int k = 0; k < kc; k++, a += 6, b += 16)
        {
            var y0 = Vector256.Load(b);
            var y1 = Vector256.Load(b + 8);
            var x = Vector256.Create(a[0]);
            s00 = Vector256.FusedMultiplyAdd(x, y0, s00); s01 = Vector256.FusedMultiplyAdd(x, y1, s01);
            x = Vector256.Create(a[1]);
            s10 = Vector256.FusedMultiplyAdd(x, y0, s10); s11 = Vector256.FusedMultiplyAdd(x, y1, s11);
            x = Vector256.Create(a[2]);
            s20 = Vector256.FusedMultiplyAdd(x, y0, s20); s21 = Vector256.FusedMultiplyAdd(x, y1, s21);
            x = Vector256.Create(a[3]);
            s30 = Vector256.FusedMultiplyAdd(x, y0, s30); s31 = Vector256.FusedMultiplyAdd(x, y1, s31);
            x = Vector256.Create(a[4]);
            s40 = Vector256.FusedMultiplyAdd(x, y0, s40); s41 = Vector256.FusedMultiplyAdd(x, y1, s41);
            x = Vector256.Create(a[5]);
            s50 = Vector256.FusedMultiplyAdd(x, y0, s50); s51 = Vector256.FusedMultiplyAdd(x, y1, s51);
        }
        s00.Store(c0); s01.Store(c0 + 8); s10.Store(c1); s11.Store(c1 + 8); s20.Store(c2); s21.Store(c2 + 8);
        s30.Store(c3); s31.Store(c3 + 8); s40.Store(c4); s41.Store(c4 + 8); s50.Store(c5); s51.Store(c5 + 8);
    }

    /// <summary>C[8×32] (+)= A panel · B panel: 16 accumulators of the 32 AVX-512 registers.</summary>
    private static void Kernel8x32(float* a, float* b, int kc, float* c, int stride, bool load)
    {
        float* c0 = c, c1 = c0 + stride, c2 = c1 + stride, c3 = c2 + stride, c4 = c3 + stride, c5 = c4 + stride, c6 = c5 + stride, c7 = c6 + stride;
        Vector512<float> s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51, s60, s61, s70, s71;
        if (load)
        {
            s00 = Vector512.Load(c0); s01 = Vector512.Load(c0 + 16); s10 = Vector512.Load(c1); s11 = Vector512.Load(c1 + 16);
            s20 = Vector512.Load(c2); s21 = Vector512.Load(c2 + 16); s30 = Vector512.Load(c3); s31 = Vector512.Load(c3 + 16);
            s40 = Vector512.Load(c4); s41 = Vector512.Load(c4 + 16); s50 = Vector512.Load(c5); s51 = Vector512.Load(c5 + 16);
            s60 = Vector512.Load(c6); s61 = Vector512.Load(c6 + 16); s70 = Vector512.Load(c7); s71 = Vector512.Load(c7 + 16);
        }
        else s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = s40 = s41 = s50 = s51 = s60 = s61 = s70 = s71 = default;
        for (int k = 0; k < kc; k++, a += 8, b += 32)
        {
            var y0 = Vector512.Load(b);
            var y1 = Vector512.Load(b + 16);
            var x = Vector512.Create(a[0]);
            s00 = Vector512.FusedMultiplyAdd(x, y0, s00); s01 = Vector512.FusedMultiplyAdd(x, y1, s01);
            x = Vector512.Create(a[1]);
            s10 = Vector512.FusedMultiplyAdd(x, y0, s10); s11 = Vector512.FusedMultiplyAdd(x, y1, s11);
            x = Vector512.Create(a[2]);
            s20 = Vector512.FusedMultiplyAdd(x, y0, s20); s21 = Vector512.FusedMultiplyAdd(x, y1, s21);
            x = Vector512.Create(a[3]);
            s30 = Vector512.FusedMultiplyAdd(x, y0, s30); s31 = Vector512.FusedMultiplyAdd(x, y1, s31);
            x = Vector512.Create(a[4]);
            s40 = Vector512.FusedMultiplyAdd(x, y0, s40); s41 = Vector512.FusedMultiplyAdd(x, y1, s41);
            x = Vector512.Create(a[5]);
            s50 = Vector512.FusedMultiplyAdd(x, y0, s50); s51 = Vector512.FusedMultiplyAdd(x, y1, s51);
            x = Vector512.Create(a[6]);
            s60 = Vector512.FusedMultiplyAdd(x, y0, s60); s61 = Vector512.FusedMultiplyAdd(x, y1, s61);
            x = Vector512.Create(a[7]);
            s70 = Vector512.FusedMultiplyAdd(x, y0, s70); s71 = Vector512.FusedMultiplyAdd(x, y1, s71);
        }
        s00.Store(c0); s01.Store(c0 + 16); s10.Store(c1); s11.Store(c1 + 16); s20.Store(c2); s21.Store(c2 + 16); s30.Store(c3); s31.Store(c3 + 16);
        s40.Store(c4); s41.Store(c4 + 16); s50.Store(c5); s51.Store(c5 + 16); s60.Store(c6); s61.Store(c6 + 16); s70.Store(c7); s71.Store(c7 + 16);
    }
}
