using System.Runtime.InteropServices;
using System.Text;
using Loom.Core;
using Loom.Core.IO;

namespace Loom.Models.Gguf;

/// <summary>
/// Builds a GGUF v3 file: metadata of every value type, tensor descriptions and aligned tensor data. Tensor data is
/// pulled from its source only while the file is written, so a model never has to sit in memory twice; the file
/// appears under its final name only once it is complete (written to a temporary file, then renamed).
/// </summary>
public sealed class GgufWriter
{
    public const uint Version = 3;
    /// <summary>llama.cpp keeps tensor names in a 64-byte buffer including the terminating zero.</summary>
    public const int MaxTensorNameBytes = 63;
    private const int MaxDimensions = 4;
    private const int ConversionChunk = 16384;

    private readonly List<KeyValuePair<string, GgufValue>> _metadata = [];
    private readonly HashSet<string> _metadataKeys = [];
    private readonly List<PendingTensor> _tensors = [];
    private readonly HashSet<string> _tensorNames = [];

    public uint Alignment { get; }

    /// <param name="alignment">Data alignment in bytes, recorded as general.alignment; a power of two.</param>
    public GgufWriter(uint alignment = GgufFile.DefaultAlignment)
    {
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(alignment), alignment, "alignment must be a positive power of two");
        Alignment = alignment;
        AddMetadata("general.alignment", new GgufValue(GgufValueType.UInt32, alignment));
    }

    /// <summary>Adds one key; the value's .NET type must be the one <see cref="GgufValue"/> documents for its type.</summary>
    public GgufWriter AddMetadata(string key, GgufValue value)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        ArgumentNullException.ThrowIfNull(value);
        if (key == "general.alignment" && _metadataKeys.Contains(key))
            throw new ArgumentException("general.alignment is set by the writer's constructor", nameof(key));
        Validate(key, value);
        if (!_metadataKeys.Add(key)) throw new ArgumentException($"metadata key '{key}' was already added", nameof(key));
        _metadata.Add(new(key, value));
        return this;
    }

    public GgufWriter Add(string key, string value) => AddMetadata(key, GgufValue.Of(value));
    public GgufWriter Add(string key, uint value) => AddMetadata(key, GgufValue.Of(value));
    public GgufWriter Add(string key, int value) => AddMetadata(key, GgufValue.Of(value));
    public GgufWriter Add(string key, float value) => AddMetadata(key, GgufValue.Of(value));
    public GgufWriter Add(string key, bool value) => AddMetadata(key, GgufValue.Of(value));
    public GgufWriter Add(string key, string[] value) => AddMetadata(key, GgufValue.Of(value));
    public GgufWriter Add(string key, float[] value) => AddMetadata(key, GgufValue.Of(value));
    public GgufWriter Add(string key, int[] value) => AddMetadata(key, GgufValue.Of(value));

    /// <summary>
    /// Adds a tensor whose bytes (already in <paramref name="type"/>'s block layout) are produced while the file is
    /// written: <paramref name="writeData"/> must write exactly the tensor's byte size to the stream it is given.
    /// </summary>
    /// <param name="dimensions">ne0 (the contiguous dimension) first, as ggml orders them.</param>
    public GgufWriter AddTensor(string name, GgmlType type, long[] dimensions, Action<Stream> writeData)
    {
        ArgumentNullException.ThrowIfNull(writeData);
        long bytes = CheckTensor(name, type, dimensions);
        _tensorNames.Add(name);
        _tensors.Add(new PendingTensor(name, type, (long[])dimensions.Clone(), bytes, writeData));
        return this;
    }

    /// <summary>Adds a tensor from its raw bytes (any type); the memory is read when the file is written, not copied now.</summary>
    public GgufWriter AddTensor(string name, GgmlType type, long[] dimensions, ReadOnlyMemory<byte> data)
    {
        long expected = CheckTensor(name, type, dimensions);
        if (data.Length != expected)
            throw new ArgumentException($"tensor '{name}' ({type}, [{string.Join(", ", dimensions)}]) needs {expected} bytes but {data.Length} were given", nameof(data));
        return AddTensor(name, type, dimensions, stream => stream.Write(data.Span));
    }

    /// <summary>Adds an F32 tensor; the array is read when the file is written.</summary>
    public GgufWriter AddF32(string name, long[] dimensions, float[] values)
    {
        CheckElementCount(name, dimensions, values.Length);
        return AddTensor(name, GgmlType.F32, dimensions, stream => stream.Write(MemoryMarshal.AsBytes(values.AsSpan())));
    }

    /// <summary>Adds an F16 tensor converted from floats with round-to-nearest-even (as ggml converts).</summary>
    public GgufWriter AddF16(string name, long[] dimensions, float[] values)
    {
        CheckElementCount(name, dimensions, values.Length);
        return AddTensor(name, GgmlType.F16, dimensions, stream =>
        {
            var buffer = new Half[Math.Min(ConversionChunk, values.Length)];
            for (int start = 0; start < values.Length; start += buffer.Length)
            {
                int n = Math.Min(buffer.Length, values.Length - start);
                for (int i = 0; i < n; i++) buffer[i] = (Half)values[start + i];
                stream.Write(MemoryMarshal.AsBytes(buffer.AsSpan(0, n)));
            }
        });
    }

    /// <summary>
    /// Writes the file. It is built under a temporary name in the same folder and renamed over
    /// <paramref name="path"/> only when complete, so readers never see a partial file.
    /// </summary>
    public void WriteTo(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var fullPath = Path.GetFullPath(path);
        var folder = Path.GetDirectoryName(fullPath)!;
        Directory.CreateDirectory(folder);
        var temp = Path.Combine(folder, $".{Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
        AtomicFile.Write(fullPath, temp, file => WriteTo(file));
    }

    /// <summary>Writes the whole file to a stream positioned at the file's start.</summary>
    public void WriteTo(Stream stream)
    {
        var counting = new CountingWriteStream(stream);
        using (var w = new BinaryWriter(counting, Encoding.UTF8, leaveOpen: true))
        {
            w.Write(GgufFile.Magic);
            w.Write(Version);
            w.Write((ulong)_tensors.Count);
            w.Write((ulong)_metadata.Count);
            foreach (var (key, value) in _metadata)
            {
                WriteString(w, key);
                w.Write((uint)value.Type);
                WriteValue(w, value);
            }
            long offset = 0;
            foreach (var t in _tensors)
            {
                WriteString(w, t.Name);
                w.Write((uint)t.Dimensions.Length);
                foreach (long d in t.Dimensions) w.Write((ulong)d);
                w.Write((uint)t.Type);
                w.Write((ulong)offset);
                offset = AlignUp(offset + t.ByteSize);
            }
            w.Flush();
        }
        Pad(counting);
        foreach (var t in _tensors)
        {
            long start = counting.Written;
            t.WriteData(counting);
            long written = counting.Written - start;
            if (written != t.ByteSize)
                throw new InvalidOperationException($"tensor '{t.Name}' wrote {written} bytes of data but its type and shape need {t.ByteSize}");
            Pad(counting);
        }
        counting.Flush();
    }

    private void Pad(CountingWriteStream stream)
    {
        int padding = (int)(AlignUp(stream.Written) - stream.Written);
        Span<byte> zeros = stackalloc byte[padding];
        zeros.Clear();
        stream.Write(zeros);
    }

    private long AlignUp(long value) => (value + Alignment - 1) / Alignment * Alignment;

    private long CheckTensor(string name, GgmlType type, long[] dimensions)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(dimensions);
        if (Encoding.UTF8.GetByteCount(name) > MaxTensorNameBytes)
            throw new ArgumentException($"tensor name '{name}' is longer than {MaxTensorNameBytes} bytes, which llama.cpp cannot load", nameof(name));
        if (_tensorNames.Contains(name)) throw new ArgumentException($"tensor '{name}' was already added", nameof(name));
        if (dimensions.Length is 0 or > MaxDimensions)
            throw new ArgumentException($"tensor '{name}' has {dimensions.Length} dimensions (1 to {MaxDimensions} allowed)", nameof(dimensions));
        if (dimensions.Any(d => d <= 0))
            throw new ArgumentException($"tensor '{name}' has a dimension that is not positive: [{string.Join(", ", dimensions)}]", nameof(dimensions));
        if (GgmlTypeInfo.Layout(type) is not var (blockSize, blockBytes))
            throw new ArgumentException($"tensor '{name}' has type {GgmlTypeInfo.Name(type)}, whose block layout is unknown", nameof(type));
        if (dimensions[0] % blockSize != 0)
            throw new ArgumentException($"tensor '{name}' row length {dimensions[0]} is not a multiple of the {type} block size {blockSize}", nameof(dimensions));
        long elements = 1;
        foreach (long d in dimensions) elements = checked(elements * d);
        return checked(elements / blockSize * blockBytes);
    }

    private static void CheckElementCount(string name, long[] dimensions, int count)
    {
        ArgumentNullException.ThrowIfNull(dimensions);
        long elements = dimensions.Aggregate(1L, (a, b) => a * b);
        if (elements != count)
            throw new ArgumentException($"tensor '{name}' has shape [{string.Join(", ", dimensions)}] ({elements} elements) but {count} values were given");
    }

    private static void Validate(string key, GgufValue value)
    {
        if (value.Type == GgufValueType.Array)
        {
            if (value.ElementType == GgufValueType.Array)
                throw new ArgumentException($"metadata '{key}': arrays of arrays are not supported", nameof(value));
            if (value.Value.GetType() != ClrType(value.ElementType, key).MakeArrayType())
                throw new ArgumentException($"metadata '{key}' is an array of {value.ElementType} but holds a {value.Value.GetType().Name}", nameof(value));
            if (value.Value is string?[] strings && strings.Any(s => s is null))
                throw new ArgumentException($"metadata '{key}' holds a null string", nameof(value));
        }
        else if (value.Value.GetType() != ClrType(value.Type, key))
        {
            throw new ArgumentException($"metadata '{key}' is declared {value.Type} but holds a {value.Value.GetType().Name}", nameof(value));
        }
    }

    private static Type ClrType(GgufValueType type, string key) => type switch
    {
        GgufValueType.UInt8 => typeof(byte),
        GgufValueType.Int8 => typeof(sbyte),
        GgufValueType.UInt16 => typeof(ushort),
        GgufValueType.Int16 => typeof(short),
        GgufValueType.UInt32 => typeof(uint),
        GgufValueType.Int32 => typeof(int),
        GgufValueType.Float32 => typeof(float),
        GgufValueType.Bool => typeof(bool),
        GgufValueType.String => typeof(string),
        GgufValueType.UInt64 => typeof(ulong),
        GgufValueType.Int64 => typeof(long),
        GgufValueType.Float64 => typeof(double),
        _ => throw new ArgumentException($"metadata '{key}' has unknown value type {(uint)type}"),
    };

    private static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    private static void WriteValue(BinaryWriter w, GgufValue value)
    {
        switch (value.Value)
        {
            case byte v: w.Write(v); break;
            case sbyte v: w.Write(v); break;
            case ushort v: w.Write(v); break;
            case short v: w.Write(v); break;
            case uint v: w.Write(v); break;
            case int v: w.Write(v); break;
            case float v: w.Write(v); break;
            case bool v: w.Write((byte)(v ? 1 : 0)); break;
            case string v: WriteString(w, v); break;
            case ulong v: w.Write(v); break;
            case long v: w.Write(v); break;
            case double v: w.Write(v); break;
            case Array array:
                w.Write((uint)value.ElementType);
                w.Write((ulong)array.Length);
                switch (array)
                {
                    case string[] strings: foreach (var s in strings) WriteString(w, s); break;
                    case bool[] bools: foreach (bool b in bools) w.Write((byte)(b ? 1 : 0)); break;
                    default: w.Write(AsBytes(array)); break;
                }
                break;
            default: throw new InvalidOperationException($"unexpected metadata value {value.Value.GetType().Name}");
        }
    }

    private static ReadOnlySpan<byte> AsBytes(Array array) => array switch
    {
        byte[] a => a,
        sbyte[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        ushort[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        short[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        uint[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        int[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        float[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        ulong[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        long[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        double[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        _ => throw new InvalidOperationException($"unexpected metadata array {array.GetType().Name}"),
    };

    private sealed record PendingTensor(string Name, GgmlType Type, long[] Dimensions, long ByteSize, Action<Stream> WriteData);
}
