using Loom.Core;
using Loom.Models.Gguf;

namespace Loom.Tests;

/// <summary>
/// An editable GGUF file for tests (a synthetic model, or a copy of a real file with keys or tensors changed). Keys and
/// tensors can be replaced or removed, which Loom's append-only <see cref="GgufWriter"/> does not allow; the file itself
/// is always written by that writer.
/// </summary>
internal sealed class ModelGgufWriter
{
    private const string AlignmentKey = "general.alignment";
    private readonly List<(string Key, GgufValue Value)> _metadata = [];
    private readonly List<(string Name, Action<GgufWriter> Add)> _tensors = [];
    private uint _alignment = GgufFile.DefaultAlignment;

    /// <summary>Sets a key, replacing its value in place if it is already there.</summary>
    public ModelGgufWriter Set(string key, GgufValue value)
    {
        int index = _metadata.FindIndex(m => m.Key == key);
        if (index >= 0) _metadata[index] = (key, value);
        else _metadata.Add((key, value));
        return this;
    }

    public ModelGgufWriter Set(string key, string value) => Set(key, GgufValue.Of(value));
    public ModelGgufWriter Set(string key, uint value) => Set(key, GgufValue.Of(value));
    public ModelGgufWriter Set(string key, float value) => Set(key, GgufValue.Of(value));

    public ModelGgufWriter Remove(string key)
    {
        _metadata.RemoveAll(m => m.Key == key);
        return this;
    }

    /// <summary>Adds (or replaces) an F32 tensor; dims are ggml's, ne0 first.</summary>
    public ModelGgufWriter Tensor(string name, long[] dims, float[] values) => Replace(name, w => w.AddF32(name, dims, values));

    public ModelGgufWriter RawTensor(string name, GgmlType type, long[] dims, byte[] data) => Replace(name, w => w.AddTensor(name, type, dims, data));

    public ModelGgufWriter RemoveTensor(string name)
    {
        _tensors.RemoveAll(t => t.Name == name);
        return this;
    }

    private ModelGgufWriter Replace(string name, Action<GgufWriter> add)
    {
        RemoveTensor(name);
        _tensors.Add((name, add));
        return this;
    }

    /// <summary>Everything in <paramref name="file"/>: metadata, tensors and alignment.</summary>
    public static ModelGgufWriter CopyOf(GgufFile file)
    {
        var writer = new ModelGgufWriter { _alignment = file.Alignment };
        foreach (var key in file.MetadataKeys.Where(k => k != AlignmentKey)) writer.Set(key, file.Metadata[key]);
        foreach (var t in file.Tensors) writer.RawTensor(t.Name, t.Type, t.Dimensions, file.Data(t).ToArray());
        return writer;
    }

    /// <summary>A temporary copy of the GGUF file at <paramref name="source"/> with <paramref name="edit"/> applied; the caller deletes it.</summary>
    public static string EditedCopy(string source, Action<ModelGgufWriter> edit)
    {
        ModelGgufWriter writer;
        using (var file = GgufFile.Open(source)) writer = CopyOf(file);
        edit(writer);
        return writer.WriteTemp();
    }

    /// <summary>Copies tokenizer.* metadata, so that llama.cpp accepts a synthetic model.</summary>
    public ModelGgufWriter TokenizerFrom(GgufFile file)
    {
        foreach (var key in file.MetadataKeys.Where(k => k.StartsWith("tokenizer.", StringComparison.Ordinal)))
            Set(key, file.Metadata[key]);
        return this;
    }

    public string WriteTemp()
    {
        var path = Path.Combine(Path.GetTempPath(), $"loom-model-{Guid.NewGuid():N}.gguf");
        Write(path);
        return path;
    }

    public void Write(string path)
    {
        // The alignment key is the writer's own (it records the alignment it pads to).
        var writer = new GgufWriter(_alignment);
        foreach (var (key, value) in _metadata) writer.AddMetadata(key, value);
        foreach (var (_, add) in _tensors) add(writer);
        writer.WriteTo(path);
    }
}
