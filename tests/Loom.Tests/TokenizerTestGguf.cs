using System.Text;
using Loom.Models.Gguf;

namespace Loom.Tests;

/// <summary>Writes metadata-only GGUF files for tokenizer tests: copies of reference vocabularies with keys changed.</summary>
internal static class GgufRewriter
{
    /// <summary>A temporary copy of a tensor-less GGUF file's metadata with one string key set.</summary>
    public static string WithString(string source, string key, string value) => WithValues(source, new() { [key] = GgufValue.Of(value) });

    public static string WithValues(string source, Dictionary<string, GgufValue?> changes)
    {
        using var file = GgufFile.Open(source);
        if (file.Tensors.Count != 0) throw new ArgumentException("only tensor-less files are rewritten", nameof(source));
        var entries = file.MetadataKeys.Select(k => (Key: k, Value: (GgufValue?)file.Metadata[k])).ToList();
        foreach (var (key, value) in changes)
        {
            int index = entries.FindIndex(e => e.Key == key);
            if (index >= 0) entries[index] = (key, value);
            else entries.Add((key, value));
        }
        string path = Path.Combine(Path.GetTempPath(), $"loom-tok-{Guid.NewGuid():N}.gguf");
        using var stream = File.Create(path);
        using var writer = new BinaryWriter(stream, Encoding.UTF8);
        var present = entries.Where(e => e.Value is not null).ToList();
        writer.Write(GgufFile.Magic);
        writer.Write(3u);
        writer.Write(0ul);
        writer.Write((ulong)present.Count);
        foreach (var (key, value) in present)
        {
            WriteString(writer, key);
            writer.Write((uint)value!.Type);
            if (value.IsArray)
            {
                writer.Write((uint)value.ElementType);
                var array = (Array)value.Value;
                writer.Write((ulong)array.Length);
                foreach (var element in array) WriteScalar(writer, value.ElementType, element!);
            }
            else WriteScalar(writer, value.Type, value.Value);
        }
        while (stream.Position % GgufFile.DefaultAlignment != 0) writer.Write((byte)0);
        return path;
    }

    private static void WriteString(BinaryWriter writer, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        writer.Write((ulong)bytes.Length);
        writer.Write(bytes);
    }

    private static void WriteScalar(BinaryWriter writer, GgufValueType type, object value)
    {
        switch (type)
        {
            case GgufValueType.UInt8: writer.Write((byte)value); break;
            case GgufValueType.Int8: writer.Write((sbyte)value); break;
            case GgufValueType.UInt16: writer.Write((ushort)value); break;
            case GgufValueType.Int16: writer.Write((short)value); break;
            case GgufValueType.UInt32: writer.Write((uint)value); break;
            case GgufValueType.Int32: writer.Write((int)value); break;
            case GgufValueType.Float32: writer.Write((float)value); break;
            case GgufValueType.Bool: writer.Write((bool)value ? (byte)1 : (byte)0); break;
            case GgufValueType.String: WriteString(writer, (string)value); break;
            case GgufValueType.UInt64: writer.Write((ulong)value); break;
            case GgufValueType.Int64: writer.Write((long)value); break;
            case GgufValueType.Float64: writer.Write((double)value); break;
            default: throw new NotSupportedException($"value type {type}");
        }
    }
}
