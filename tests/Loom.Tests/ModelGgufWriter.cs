using System.Text;
using Loom.Core;
using Loom.Models.Gguf;

namespace Loom.Tests;

/// <summary>Writes small GGUF v3 files for tests: synthetic models, or edited copies of a real one.</summary>
internal sealed class ModelGgufWriter
{
    private const int Alignment = 32;
    private readonly List<(string Key, GgufValue Value)> _metadata = [];
    private readonly List<(string Name, GgmlType Type, long[] Dims, byte[] Data)> _tensors = [];

    public ModelGgufWriter Set(string key, GgufValue value)
    {
        _metadata.RemoveAll(m => m.Key == key);
        _metadata.Add((key, value));
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
    public ModelGgufWriter Tensor(string name, long[] dims, float[] values)
    {
        if (dims.Aggregate(1L, (a, b) => a * b) != values.Length) throw new ArgumentException($"{name}: {values.Length} values for shape [{string.Join(", ", dims)}]");
        var bytes = new byte[values.Length * 4];
        Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length);
        return RawTensor(name, GgmlType.F32, dims, bytes);
    }

    public ModelGgufWriter RawTensor(string name, GgmlType type, long[] dims, byte[] data)
    {
        RemoveTensor(name);
        _tensors.Add((name, type, dims, data));
        return this;
    }

    public ModelGgufWriter RemoveTensor(string name)
    {
        _tensors.RemoveAll(t => t.Name == name);
        return this;
    }

    public static ModelGgufWriter CopyOf(GgufFile file)
    {
        var writer = new ModelGgufWriter();
        foreach (var key in file.MetadataKeys) writer.Set(key, file.Metadata[key]);
        foreach (var t in file.Tensors) writer.RawTensor(t.Name, t.Type, t.Dimensions, file.Data(t).ToArray());
        return writer;
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
        using var stream = File.Create(path);
        using var w = new BinaryWriter(stream, Encoding.UTF8);
        w.Write(GgufFile.Magic);
        w.Write(3u);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_metadata.Count);
        foreach (var (key, value) in _metadata)
        {
            WriteString(w, key);
            w.Write((uint)value.Type);
            if (value.IsArray)
            {
                var array = (Array)value.Value;
                w.Write((uint)value.ElementType);
                w.Write((ulong)array.Length);
                foreach (var element in array) WriteScalar(w, value.ElementType, element!);
            }
            else WriteScalar(w, value.Type, value.Value);
        }
        long offset = 0;
        foreach (var (name, type, dims, data) in _tensors)
        {
            WriteString(w, name);
            w.Write((uint)dims.Length);
            foreach (var d in dims) w.Write((ulong)d);
            w.Write((uint)type);
            w.Write((ulong)offset);
            offset = Align(offset + data.Length);
        }
        Pad(w);
        foreach (var (_, _, _, data) in _tensors)
        {
            w.Write(data);
            Pad(w);
        }
    }

    private static long Align(long n) => (n + Alignment - 1) / Alignment * Alignment;

    private static void Pad(BinaryWriter w)
    {
        w.Flush();
        while (w.BaseStream.Position % Alignment != 0) w.Write((byte)0);
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    private static void WriteScalar(BinaryWriter w, GgufValueType type, object v)
    {
        switch (type)
        {
            case GgufValueType.UInt8: w.Write((byte)v); break;
            case GgufValueType.Int8: w.Write((sbyte)v); break;
            case GgufValueType.UInt16: w.Write((ushort)v); break;
            case GgufValueType.Int16: w.Write((short)v); break;
            case GgufValueType.UInt32: w.Write((uint)v); break;
            case GgufValueType.Int32: w.Write((int)v); break;
            case GgufValueType.Float32: w.Write((float)v); break;
            case GgufValueType.Bool: w.Write((bool)v ? (byte)1 : (byte)0); break;
            case GgufValueType.String: WriteString(w, (string)v); break;
            case GgufValueType.UInt64: w.Write((ulong)v); break;
            case GgufValueType.Int64: w.Write((long)v); break;
            case GgufValueType.Float64: w.Write((double)v); break;
            default: throw new ArgumentException($"cannot write metadata of type {type}");
        }
    }
}
