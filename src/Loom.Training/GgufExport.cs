using Loom.Core;
using Loom.Core.Quantization;
using Loom.Models.Gguf;

namespace Loom.Training;

public enum ExportPrecision
{
    F32,
    /// <summary>Matrices in F16, norm gains in F32 (as llama.cpp's converters store them).</summary>
    F16,
    /// <summary>
    /// Matrices whose rows are whole Q8_0 blocks (a multiple of 32 wide) in Q8_0, other matrices in F16, norm gains in
    /// F32: what llama.cpp's converters write for <c>--outtype q8_0</c>.
    /// </summary>
    Q8_0,
}

/// <summary>Writes a trained decoder as a llama-architecture GGUF that Loom's inference (and llama.cpp) loads.</summary>
public static class GgufExport
{
    /// <summary>llama.cpp's llama_ftype values for <c>general.file_type</c>.</summary>
    private const uint AllF32 = 0, MostlyF16 = 1, MostlyQ8_0 = 7;
    /// <summary>Rows quantized per write, so a large matrix never needs a second full-size buffer.</summary>
    private const int QuantizeRowsPerChunk = 256;

    public static void Write(string path, Decoder model, ITokenEncoder tokenizer, ExportPrecision precision, string name = "loom-trained")
    {
        if (tokenizer.VocabSize != model.Shape.VocabSize)
            throw new ArgumentException($"the tokenizer's vocabulary ({tokenizer.VocabSize}) differs from the model's ({model.Shape.VocabSize})");
        var s = model.Shape;
        var writer = new GgufWriter();
        writer.Add("general.architecture", "llama");
        writer.Add("general.name", name);
        writer.Add("general.file_type", precision switch
        {
            ExportPrecision.F32 => AllF32,
            ExportPrecision.F16 => MostlyF16,
            ExportPrecision.Q8_0 => MostlyQ8_0,
            _ => throw new ArgumentOutOfRangeException(nameof(precision), precision, "unknown export precision"),
        });
        writer.Add("llama.vocab_size", (uint)s.VocabSize);
        writer.Add("llama.context_length", (uint)s.Context);
        writer.Add("llama.embedding_length", (uint)s.Dim);
        writer.Add("llama.block_count", (uint)s.Layers);
        writer.Add("llama.feed_forward_length", (uint)s.Hidden);
        writer.Add("llama.attention.head_count", (uint)s.Heads);
        writer.Add("llama.attention.head_count_kv", (uint)s.KvHeads);
        writer.Add("llama.attention.layer_norm_rms_epsilon", s.NormEpsilon);
        writer.Add("llama.rope.freq_base", s.RopeBase);
        writer.Add("llama.rope.dimension_count", (uint)s.HeadDim);
        tokenizer.DescribeInGguf(writer);

        // No output.weight: readers then use token_embd.weight as the (tied) output head.
        foreach (var slot in model.Layout.Slots)
        {
            float[] values = slot.Of(model.Parameters).ToArray();
            long[] dimensions = slot.Rows == 1 ? [slot.Cols] : [slot.Cols, slot.Rows];
            switch (TensorType(slot, precision))
            {
                case GgmlType.Q8_0: AddQ8_0(writer, slot, dimensions, values); break;
                case GgmlType.F16: writer.AddF16(slot.Name, dimensions, values); break;
                default: writer.AddF32(slot.Name, dimensions, values); break;
            }
        }
        writer.WriteTo(path);
    }

    /// <summary>
    /// The type a tensor is stored in: vectors (norm gains) stay F32; a matrix whose rows cannot be cut into whole
    /// Q8_0 blocks falls back to F16, as llama.cpp's converter does.
    /// </summary>
    private static GgmlType TensorType(TensorSlot slot, ExportPrecision precision) => precision switch
    {
        _ when slot.Rows == 1 => GgmlType.F32,
        ExportPrecision.Q8_0 when slot.Cols % GgmlTypeInfo.BlockSize(GgmlType.Q8_0) == 0 => GgmlType.Q8_0,
        ExportPrecision.Q8_0 or ExportPrecision.F16 => GgmlType.F16,
        _ => GgmlType.F32,
    };

    private static void AddQ8_0(GgufWriter writer, TensorSlot slot, long[] dimensions, float[] values) =>
        writer.AddTensor(slot.Name, GgmlType.Q8_0, dimensions, stream =>
        {
            long rowBytes = GgmlTypeInfo.RowBytes(GgmlType.Q8_0, slot.Cols);
            var buffer = new byte[Math.Min(QuantizeRowsPerChunk, slot.Rows) * rowBytes];
            for (int row = 0; row < slot.Rows; row += QuantizeRowsPerChunk)
            {
                int rows = Math.Min(QuantizeRowsPerChunk, slot.Rows - row);
                int bytes = Quantizer.Quantize(GgmlType.Q8_0, values.AsSpan(row * slot.Cols, rows * slot.Cols), buffer);
                stream.Write(buffer, 0, bytes);
            }
        });
}
