using Loom.Models.Gguf;

namespace Loom.Training;

public enum ExportPrecision
{
    F32,
    /// <summary>Matrices in F16, norm gains in F32 (as llama.cpp's converters store them).</summary>
    F16,
}

/// <summary>Writes a trained decoder as a llama-architecture GGUF that Loom's inference (and llama.cpp) loads.</summary>
public static class GgufExport
{
    public static void Write(string path, Decoder model, ITokenEncoder tokenizer, ExportPrecision precision, string name = "loom-trained")
    {
        if (tokenizer.VocabSize != model.Shape.VocabSize)
            throw new ArgumentException($"the tokenizer's vocabulary ({tokenizer.VocabSize}) differs from the model's ({model.Shape.VocabSize})");
        var s = model.Shape;
        var writer = new GgufWriter();
        writer.Add("general.architecture", "llama");
        writer.Add("general.name", name);
        writer.Add("general.file_type", precision == ExportPrecision.F16 ? 1u : 0u);
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
            if (precision == ExportPrecision.F16 && slot.Rows > 1) writer.AddF16(slot.Name, dimensions, values);
            else writer.AddF32(slot.Name, dimensions, values);
        }
        writer.WriteTo(path);
    }
}
