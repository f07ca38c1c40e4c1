namespace Loom.Core;

/// <summary>Tensor element types, numbered as ggml numbers them (the ids stored in GGUF files).</summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
}

/// <summary>Block geometry of each type: how many elements share one block and how many bytes the block takes.</summary>
public static class GgmlTypeInfo
{
    /// <summary>Returns (elements per block, bytes per block), or null for a type Loom cannot store.</summary>
    public static (int BlockSize, int BlockBytes)? Layout(GgmlType type) => type switch
    {
        GgmlType.F32 => (1, 4),
        GgmlType.F16 => (1, 2),
        GgmlType.BF16 => (1, 2),
        GgmlType.F64 => (1, 8),
        GgmlType.I8 => (1, 1),
        GgmlType.I16 => (1, 2),
        GgmlType.I32 => (1, 4),
        GgmlType.I64 => (1, 8),
        GgmlType.Q4_0 => (32, 18),
        GgmlType.Q4_1 => (32, 20),
        GgmlType.Q5_0 => (32, 22),
        GgmlType.Q5_1 => (32, 24),
        GgmlType.Q8_0 => (32, 34),
        GgmlType.Q8_1 => (32, 36),
        GgmlType.Q2_K => (256, 84),
        GgmlType.Q3_K => (256, 110),
        GgmlType.Q4_K => (256, 144),
        GgmlType.Q5_K => (256, 176),
        GgmlType.Q6_K => (256, 210),
        GgmlType.Q8_K => (256, 292),
        GgmlType.IQ4_NL => (32, 18),
        GgmlType.IQ4_XS => (256, 136),
        _ => null,
    };

    public static int BlockSize(GgmlType type) => Layout(type)?.BlockSize ?? throw Unsupported(type);

    public static int BlockBytes(GgmlType type) => Layout(type)?.BlockBytes ?? throw Unsupported(type);

    /// <summary>Bytes taken by one row of <paramref name="elements"/> elements; the row must be whole blocks.</summary>
    public static long RowBytes(GgmlType type, long elements)
    {
        var (blockSize, blockBytes) = Layout(type) ?? throw Unsupported(type);
        if (elements % blockSize != 0)
            throw new ArgumentException($"a row of {elements} elements is not a whole number of {type} blocks ({blockSize} elements each)");
        return elements / blockSize * blockBytes;
    }

    public static bool IsKnown(GgmlType type) => Layout(type) is not null;

    public static string Name(GgmlType type) => Enum.IsDefined(type) ? type.ToString() : $"type {(uint)type}";

    private static NotSupportedException Unsupported(GgmlType type) => new($"tensor type {Name(type)} is not supported");
}
