using System.Numerics.Tensors;

namespace Loom.Core.Kernels;

/// <summary>
/// A weight matrix of <see cref="Rows"/> rows × <see cref="Cols"/> columns stored row-major in a GGML type
/// (each row is Cols elements, i.e. ne0 = Cols in GGUF terms). Data is borrowed (usually a memory map), never copied.
/// </summary>
public sealed unsafe class WeightMatrix
{
    public GgmlType Type { get; }
    public byte* Data { get; }
    public int Rows { get; }
    public int Cols { get; }
    public long RowBytes { get; }

    public WeightMatrix(GgmlType type, byte* data, int rows, int cols)
    {
        Type = type;
        Data = data;
        Rows = rows;
        Cols = cols;
        RowBytes = GgmlTypeInfo.RowBytes(type, cols);
    }

    /// <summary>y[t*Rows + r] = Σc W[r,c]·x[t*Cols + c] for each of the <paramref name="tokens"/> input vectors.</summary>
    public void Multiply(float* x, float* y, int tokens)
    {
        var row = new float[Cols];
        for (int r = 0; r < Rows; r++)
        {
            DequantizeRow(r, row);
            for (int t = 0; t < tokens; t++)
                y[(long)t * Rows + r] = TensorPrimitives.Dot(row, new ReadOnlySpan<float>(x + (long)t * Cols, Cols));
        }
    }

    /// <summary>Writes row <paramref name="r"/> as floats (used for embedding look-ups).</summary>
    public void DequantizeRow(int r, Span<float> destination)
    {
        byte* src = Data + r * RowBytes;
        switch (Type)
        {
            case GgmlType.F32:
                new ReadOnlySpan<float>(src, Cols).CopyTo(destination);
                break;
            case GgmlType.F16:
                TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(src, Cols), destination);
                break;
            default:
                throw new NotSupportedException($"{Type} is not supported yet");
        }
    }
}
