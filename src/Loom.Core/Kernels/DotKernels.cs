namespace Loom.Core.Kernels;

/// <summary>What a weight type needs its input vectors turned into before the dot products.</summary>
internal enum ActivationKind
{
    Float,
    /// <summary>32-element Q8 blocks (ggml's Q8_0, with Q8_1's sums for the types that have a min).</summary>
    Q8Blocks32,
    /// <summary>256-element Q8_K super-blocks.</summary>
    Q8K,
}

/// <summary>Picks the row·vector kernel for a weight type and instruction set.</summary>
internal static unsafe class DotKernels
{
    public static ActivationKind ActivationFor(GgmlType type) => type switch
    {
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 => ActivationKind.Float,
        GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.IQ4_NL => ActivationKind.Q8Blocks32,
        GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.IQ4_XS => ActivationKind.Q8K,
        _ => throw new NotSupportedException($"matrix kernels do not support {GgmlTypeInfo.Name(type)}"),
    };

    public static bool IsSupported(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.IQ4_NL
        or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.IQ4_XS;

    /// <summary>
    /// The kernel computing one row·vector product. Its int argument counts blocks of the type
    /// (elements for the float types, 32-blocks, or 256-super-blocks).
    /// </summary>
    public static delegate*<byte*, int, in ActivationRow, float> Select(GgmlType type, KernelIsa isa) => isa switch
    {
        KernelIsa.Portable => type switch
        {
            GgmlType.F32 => &FloatKernels.DotF32Portable,
            GgmlType.F16 => &FloatKernels.DotF16Portable,
            GgmlType.BF16 => &FloatKernels.DotBF16Portable,
            GgmlType.Q4_0 => &Block32Kernels.DotPortable<Q4_0Format>,
            GgmlType.Q4_1 => &Block32Kernels.DotPortable<Q4_1Format>,
            GgmlType.Q5_0 => &Block32Kernels.DotPortable<Q5_0Format>,
            GgmlType.Q5_1 => &Block32Kernels.DotPortable<Q5_1Format>,
            GgmlType.Q8_0 => &Block32Kernels.DotPortable<Q8_0Format>,
            GgmlType.IQ4_NL => &Block32Kernels.DotPortable<Iq4NlFormat>,
            GgmlType.Q2_K => &PortableQ2K,
            GgmlType.Q3_K => &PortableQ3K,
            GgmlType.Q4_K => &PortableQ4K,
            GgmlType.Q5_K => &PortableQ5K,
            GgmlType.Q6_K => &PortableQ6K,
            GgmlType.IQ4_XS => &PortableIq4Xs,
            _ => throw Unsupported(type),
        },
        KernelIsa.Avx2 or KernelIsa.Avx512 => type switch
        {
            GgmlType.F32 => isa == KernelIsa.Avx512 ? &FloatKernels.DotF32Avx512 : &FloatKernels.DotF32Avx2,
            GgmlType.F16 => isa == KernelIsa.Avx512 ? &FloatKernels.DotF16Avx512 : &FloatKernels.DotF16Avx2,
            GgmlType.BF16 => isa == KernelIsa.Avx512 ? &FloatKernels.DotBF16Avx512 : &FloatKernels.DotBF16Avx2,
            // Each one-token kernel is exactly one column of the same path's four-token (or tile) kernel (batch
            // invariance). Q4_0, Q5_0 and Q8_0 use the 256-bit row-lane kernels on both paths (see RowLaneKernels).
            GgmlType.Q4_0 => &RowLaneKernels.DotQ4_0,
            GgmlType.Q4_1 => isa == KernelIsa.Avx512 ? &Block32Kernels.DotAvx512<Q4_1Format> : &Block32Kernels.DotAvx2<Q4_1Format>,
            GgmlType.Q5_0 => &RowLaneKernels.DotQ5_0,
            GgmlType.Q5_1 => isa == KernelIsa.Avx512 ? &Block32Kernels.DotAvx512<Q5_1Format> : &Block32Kernels.DotAvx2<Q5_1Format>,
            GgmlType.Q8_0 => &RowLaneKernels.DotQ8_0,
            GgmlType.IQ4_NL => isa == KernelIsa.Avx512 ? &Block32Kernels.DotAvx512<Iq4NlFormat> : &Block32Kernels.DotAvx2<Iq4NlFormat>,
            GgmlType.Q2_K => &KQuantKernels.DotQ2KAvx2,
            GgmlType.Q3_K => &KQuantKernels.DotQ3KAvx2,
            GgmlType.Q4_K => &KQuantKernels.DotQ4KAvx2,
            GgmlType.Q5_K => &KQuantKernels.DotQ5KAvx2,
            GgmlType.Q6_K => &KQuantKernels.DotQ6KAvx2,
            GgmlType.IQ4_XS => &KQuantKernels.DotIq4XsAvx2,
            _ => throw Unsupported(type),
        },
        _ => throw new ArgumentOutOfRangeException(nameof(isa)),
    };

    /// <summary>
    /// The kernel computing one row against four input vectors at once (the weights are unpacked once for all four),
    /// or null where the type has none on this path and the single-vector kernel runs four times. Each of its columns
    /// computes bit for bit what <see cref="Select"/>'s kernel computes for that input alone.
    /// </summary>
    public static delegate*<byte*, int, ActivationRow*, float*, void> SelectFour(GgmlType type, KernelIsa isa)
    {
        if (isa == KernelIsa.Portable) return null;
        bool wide = isa == KernelIsa.Avx512;
        return type switch
        {
            GgmlType.F32 => wide ? &FloatKernels.Dot4F32Avx512 : &FloatKernels.Dot4F32Avx2,
            GgmlType.F16 => wide ? &FloatKernels.Dot4F16Avx512 : &FloatKernels.Dot4F16Avx2,
            GgmlType.BF16 => wide ? &FloatKernels.Dot4BF16Avx512 : &FloatKernels.Dot4BF16Avx2,
            GgmlType.Q4_1 => wide ? &Block32Kernels.Dot4Avx512<Q4_1Format> : &Block32Kernels.Dot4Avx2<Q4_1Format>,
            GgmlType.Q5_1 => wide ? &Block32Kernels.Dot4Avx512<Q5_1Format> : &Block32Kernels.Dot4Avx2<Q5_1Format>,
            GgmlType.IQ4_NL => wide ? &Block32Kernels.Dot4Avx512<Iq4NlFormat> : &Block32Kernels.Dot4Avx2<Iq4NlFormat>,
            GgmlType.Q4_K => &KQuantKernels.Dot4Q4KAvx2,
            GgmlType.Q5_K => &KQuantKernels.Dot4Q5KAvx2,
            GgmlType.Q6_K => &KQuantKernels.Dot4Q6KAvx2,
            _ => null,
        };
    }

    /// <summary>
    /// The kernel computing a tile of rows (<see cref="TileRows"/>) against every token of a call (rows transposed once
    /// into scratch), or null where the type has none on this path. Each of its outputs is bit for bit what <see cref="Select"/>'s kernel gives.
    /// </summary>
    public static delegate*<byte*, long, int, sbyte*, float*, short*, int, float*, int, byte*, void> SelectTile(GgmlType type, KernelIsa isa, int tokens) => isa switch
    {
        KernelIsa.Avx512 when tokens >= WideTileMinTokens => type switch
        {
            GgmlType.Q8_0 => &RowLaneKernels.WideTileQ8_0,
            GgmlType.Q4_0 => &RowLaneKernels.WideTileQ4_0,
            GgmlType.Q5_0 => &RowLaneKernels.WideTileQ5_0,
            _ => null,
        },
        KernelIsa.Avx2 or KernelIsa.Avx512 => type switch
        {
            GgmlType.Q8_0 => &RowLaneKernels.TileQ8_0,
            GgmlType.Q4_0 => &RowLaneKernels.TileQ4_0,
            GgmlType.Q5_0 => &RowLaneKernels.TileQ5_0,
            _ => null,
        },
        _ => null,
    };

    /// <summary>
    /// From this many tokens on, the AVX-512 path takes sixteen-row tiles. With fewer, transposing the wider tile costs
    /// more than its halved instruction count saves: on Zen 4, 8 tokens ran up to 10% slower,
    /// 32 tokens of Q4_0 16% and 128-token prefill 8–27% faster.
    /// </summary>
    public const int WideTileMinTokens = 16;

    /// <summary>Rows one call of <see cref="SelectTile"/>'s kernel computes.</summary>
    public static int TileRows(KernelIsa isa, int tokens) =>
        isa == KernelIsa.Avx512 && tokens >= WideTileMinTokens ? RowLaneKernels.WideTileRows : RowLaneKernels.TileRows;

    private static float PortableQ2K(byte* row, int n, in ActivationRow x) => KQuantKernels.DotPortable(GgmlType.Q2_K, row, n, x);
    private static float PortableQ3K(byte* row, int n, in ActivationRow x) => KQuantKernels.DotPortable(GgmlType.Q3_K, row, n, x);
    private static float PortableQ4K(byte* row, int n, in ActivationRow x) => KQuantKernels.DotPortable(GgmlType.Q4_K, row, n, x);
    private static float PortableQ5K(byte* row, int n, in ActivationRow x) => KQuantKernels.DotPortable(GgmlType.Q5_K, row, n, x);
    private static float PortableQ6K(byte* row, int n, in ActivationRow x) => KQuantKernels.DotPortable(GgmlType.Q6_K, row, n, x);
    private static float PortableIq4Xs(byte* row, int n, in ActivationRow x) => KQuantKernels.DotPortable(GgmlType.IQ4_XS, row, n, x);

    private static NotSupportedException Unsupported(GgmlType type) => new($"matrix kernels do not support {GgmlTypeInfo.Name(type)}");
}
