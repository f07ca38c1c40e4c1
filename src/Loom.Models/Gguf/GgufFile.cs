using System.IO.MemoryMappedFiles;
using System.Text;
using Loom.Core;

namespace Loom.Models.Gguf;

/// <summary>One tensor's description; <see cref="Dimensions"/> lists ne0 (the contiguous one) first, as ggml does.</summary>
public sealed record GgufTensorInfo(string Name, GgmlType Type, long[] Dimensions, long DataOffset, long ByteSize)
{
    public long ElementCount => Dimensions.Aggregate(1L, (a, b) => a * b);
    /// <summary>Elements per row (ne0).</summary>
    public long RowLength => Dimensions[0];
    /// <summary>Number of rows: the product of every dimension after the first.</summary>
    public long RowCount => ElementCount / Dimensions[0];
}

/// <summary>
/// A GGUF v2/v3 file opened through a read-only memory map. Metadata and tensor descriptions are parsed up front with
/// every length and offset checked against the file size; tensor data stays in the map and is never copied.
/// </summary>
public sealed unsafe class GgufFile : IDisposable
{
    public const uint Magic = 0x46554747; // "GGUF" little-endian
    public const uint DefaultAlignment = 32;
    private const int MaxDimensions = 4;

    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _base;
    private bool _disposed;

    public string Path { get; }
    public uint Version { get; }
    public long FileSize { get; }
    public uint Alignment { get; }
    public long DataStart { get; }
    public IReadOnlyDictionary<string, GgufValue> Metadata { get; }
    /// <summary>Metadata keys in file order.</summary>
    public IReadOnlyList<string> MetadataKeys { get; }
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }
    private readonly Dictionary<string, GgufTensorInfo> _tensorsByName;

    private GgufFile(string path, bool privateCopy)
    {
        IsPrivateCopy = privateCopy;
        Path = path;
        var info = new FileInfo(path);
        if (!info.Exists) throw new FileNotFoundException($"model file not found: {path}", path);
        FileSize = info.Length;
        if (FileSize < 24) throw new GgufFormatException($"{path}: file is {FileSize} bytes, too small to be GGUF (the header alone is 24)");

        // Copy-on-write: pages stay shared with the page cache until written, and writes never reach the file.
        // The file is opened for reading only, so read-only model files work either way.
        var access = privateCopy ? MemoryMappedFileAccess.CopyOnWrite : MemoryMappedFileAccess.Read;
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            _map = MemoryMappedFile.CreateFromFile(stream, null, 0, access, HandleInheritability.None, leaveOpen: false);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
        try
        {
            _view = _map.CreateViewAccessor(0, 0, access);
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            _base = p + _view.PointerOffset;

            var reader = new Reader(_base, FileSize, path);
            uint magic = reader.U32();
            if (magic != Magic) throw new GgufFormatException($"{path}: not a GGUF file (magic 0x{magic:X8}, expected \"GGUF\")");
            Version = reader.U32();
            if (Version is not (2 or 3)) throw new GgufFormatException($"{path}: GGUF version {Version} is not supported (only 2 and 3)");
            ulong tensorCount = reader.U64();
            ulong kvCount = reader.U64();
            // Each key/value takes at least 12 bytes and each tensor description at least 24, so larger counts are lies.
            if (kvCount > (ulong)FileSize / 12) throw new GgufFormatException($"{path}: metadata count {kvCount} is impossible for a {FileSize}-byte file");
            if (tensorCount > (ulong)FileSize / 24) throw new GgufFormatException($"{path}: tensor count {tensorCount} is impossible for a {FileSize}-byte file");

            var metadata = new Dictionary<string, GgufValue>((int)kvCount);
            var keys = new List<string>((int)kvCount);
            for (ulong i = 0; i < kvCount; i++)
            {
                string key = reader.String();
                var type = (GgufValueType)reader.U32();
                var value = reader.Value(type, key);
                if (!metadata.TryAdd(key, value)) throw new GgufFormatException($"{path}: metadata key '{key}' appears twice");
                keys.Add(key);
            }
            Metadata = metadata;
            MetadataKeys = keys;

            Alignment = DefaultAlignment;
            if (metadata.TryGetValue("general.alignment", out var alignValue))
            {
                Alignment = alignValue.Value switch
                {
                    uint u => u,
                    int s when s > 0 => (uint)s,
                    ulong l when l <= uint.MaxValue => (uint)l,
                    _ => 0,
                };
                if (Alignment == 0 || (Alignment & (Alignment - 1)) != 0)
                    throw new GgufFormatException($"{path}: general.alignment {alignValue} is not a positive power of two");
            }

            var raw = new List<(string Name, GgmlType Type, long[] Dims, ulong Offset)>((int)tensorCount);
            for (ulong i = 0; i < tensorCount; i++)
            {
                string name = reader.String();
                uint nDims = reader.U32();
                if (nDims is 0 or > MaxDimensions) throw new GgufFormatException($"{path}: tensor '{name}' has {nDims} dimensions (1 to {MaxDimensions} allowed)");
                var dims = new long[nDims];
                for (int d = 0; d < nDims; d++)
                {
                    ulong n = reader.U64();
                    if (n == 0 || n > (ulong)FileSize * 8) throw new GgufFormatException($"{path}: tensor '{name}' has absurd dimension {d} = {n}");
                    dims[d] = (long)n;
                }
                uint typeId = reader.U32();
                raw.Add((name, (GgmlType)typeId, dims, reader.U64()));
            }
            DataStart = AlignUp(reader.Position, Alignment);

            var tensors = new List<GgufTensorInfo>(raw.Count);
            _tensorsByName = new Dictionary<string, GgufTensorInfo>(raw.Count);
            foreach (var (name, type, dims, offset) in raw)
            {
                if (GgmlTypeInfo.Layout(type) is not var (blockSize, blockBytes))
                    throw new GgufFormatException($"{path}: tensor '{name}' has unknown or unsupported type {GgmlTypeInfo.Name(type)}");
                if (dims[0] % blockSize != 0)
                    throw new GgufFormatException($"{path}: tensor '{name}' row length {dims[0]} is not a multiple of the {type} block size {blockSize}");
                // Elements are bounded by 8 per file byte, so this product cannot overflow before the size check below.
                decimal elements = dims.Aggregate(1m, (a, b) => a * b);
                decimal bytes = elements / blockSize * blockBytes;
                if (offset % Alignment != 0)
                    throw new GgufFormatException($"{path}: tensor '{name}' data offset {offset} is not aligned to {Alignment}");
                if ((decimal)DataStart + offset + bytes > FileSize)
                    throw new GgufFormatException($"{path}: tensor '{name}' data ({bytes} bytes at offset {offset}) runs past the end of the file ({FileSize} bytes); the file is truncated or corrupt");
                var t = new GgufTensorInfo(name, type, dims, DataStart + (long)offset, (long)bytes);
                if (!_tensorsByName.TryAdd(name, t)) throw new GgufFormatException($"{path}: tensor '{name}' appears twice");
                tensors.Add(t);
            }
            // Each tensor owns its bytes (llama.cpp requires them consecutive): the model loader reorganises some in place.
            var byOffset = tensors.OrderBy(t => t.DataOffset).ToArray();
            for (int i = 1; i < byOffset.Length; i++)
                if (byOffset[i - 1].DataOffset + byOffset[i - 1].ByteSize > byOffset[i].DataOffset)
                    throw new GgufFormatException($"{path}: the data of tensors '{byOffset[i - 1].Name}' and '{byOffset[i].Name}' overlap " +
                                                  $"(bytes {byOffset[i].DataOffset}–{byOffset[i - 1].DataOffset + byOffset[i - 1].ByteSize - 1}); the file is corrupt");
            Tensors = tensors;
        }
        catch
        {
            ReleaseMap();
            throw;
        }
    }

    public static GgufFile Open(string path) => new(path, privateCopy: false);

    /// <summary>
    /// Opens the file mapped copy-on-write, so that tensor data may be reorganised in place (as the model loader does
    /// for interleaved weights): written pages become private to this process, and the file itself never changes.
    /// </summary>
    public static GgufFile OpenPrivateCopy(string path) => new(path, privateCopy: true);

    /// <summary>True when the map is a private copy-on-write one (<see cref="OpenPrivateCopy"/>), whose tensor data may be written.</summary>
    public bool IsPrivateCopy { get; }

    public GgufTensorInfo? FindTensor(string name) => _tensorsByName.GetValueOrDefault(name);

    public GgufTensorInfo GetTensor(string name) =>
        FindTensor(name) ?? throw new GgufFormatException($"{Path}: tensor '{name}' is missing");

    /// <summary>Address of a tensor's data inside the map; valid until the file is disposed.</summary>
    public byte* DataPointer(GgufTensorInfo tensor)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _base + tensor.DataOffset;
    }

    /// <summary>A tensor's bytes as a span (tensors up to 2 GiB).</summary>
    public ReadOnlySpan<byte> Data(GgufTensorInfo tensor)
    {
        if (tensor.ByteSize > int.MaxValue) throw new NotSupportedException($"tensor '{tensor.Name}' is larger than 2 GiB; use DataPointer");
        return new ReadOnlySpan<byte>(DataPointer(tensor), (int)tensor.ByteSize);
    }

    public bool Has(string key) => Metadata.ContainsKey(key);

    public GgufValue? Find(string key) => Metadata.GetValueOrDefault(key);

    public string? GetString(string key) => Find(key)?.Value as string;

    /// <summary>An integer-valued key of any integer type, or null when absent.</summary>
    public long? GetInteger(string key) => Find(key)?.Value switch
    {
        byte v => v, sbyte v => v, ushort v => v, short v => v, uint v => v, int v => v, ulong v => checked((long)v), long v => v,
        bool b => b ? 1 : 0,
        null => null,
        var other => throw new GgufFormatException($"{Path}: metadata '{key}' should be an integer but is {other.GetType().Name}"),
    };

    public float? GetFloat(string key) => Find(key)?.Value switch
    {
        float f => f, double d => (float)d,
        byte or sbyte or ushort or short or uint or int or ulong or long => (float)Convert.ToDouble(Find(key)!.Value),
        null => null,
        var other => throw new GgufFormatException($"{Path}: metadata '{key}' should be a number but is {other.GetType().Name}"),
    };

    public bool? GetBool(string key) => Find(key)?.Value switch
    {
        bool b => b,
        null => null,
        var other => Convert.ToInt64(other) != 0,
    };

    public T[]? GetArray<T>(string key) => Find(key)?.Value switch
    {
        T[] a => a,
        null => null,
        var other => throw new GgufFormatException($"{Path}: metadata '{key}' should be an array of {typeof(T).Name} but is {other.GetType().Name}"),
    };

    private static long AlignUp(long value, long alignment) => (value + alignment - 1) / alignment * alignment;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        ReleaseMap();
    }

    private void ReleaseMap()
    {
        if (_view is not null)
        {
            if (_base != null) _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
    }

    /// <summary>Bounds-checked little-endian reader over the mapped header.</summary>
    private struct Reader(byte* start, long length, string path)
    {
        public long Position;

        private void Need(long bytes, string what)
        {
            if (bytes < 0 || Position + bytes > length)
                throw new GgufFormatException($"{path}: file ends at byte {length} while reading {what} at byte {Position}; it is truncated or corrupt");
        }

        private T Read<T>(string what) where T : unmanaged
        {
            Need(sizeof(T), what);
            T v = System.Runtime.CompilerServices.Unsafe.ReadUnaligned<T>(start + Position);
            Position += sizeof(T);
            return v;
        }

        public uint U32() => Read<uint>("a 32-bit integer");
        public ulong U64() => Read<ulong>("a 64-bit integer");

        public string String()
        {
            ulong len = Read<ulong>("a string length");
            if (len > (ulong)(length - Position)) throw new GgufFormatException($"{path}: string length {len} at byte {Position - 8} runs past the end of the file");
            var s = Encoding.UTF8.GetString(start + Position, (int)len);
            Position += (long)len;
            return s;
        }

        public GgufValue Value(GgufValueType type, string key) => type switch
        {
            GgufValueType.UInt8 => new(type, Read<byte>(key)),
            GgufValueType.Int8 => new(type, Read<sbyte>(key)),
            GgufValueType.UInt16 => new(type, Read<ushort>(key)),
            GgufValueType.Int16 => new(type, Read<short>(key)),
            GgufValueType.UInt32 => new(type, Read<uint>(key)),
            GgufValueType.Int32 => new(type, Read<int>(key)),
            GgufValueType.Float32 => new(type, Read<float>(key)),
            GgufValueType.Bool => new(type, Read<byte>(key) != 0),
            GgufValueType.String => new(type, String()),
            GgufValueType.UInt64 => new(type, Read<ulong>(key)),
            GgufValueType.Int64 => new(type, Read<long>(key)),
            GgufValueType.Float64 => new(type, Read<double>(key)),
            GgufValueType.Array => ArrayValue(key),
            _ => throw new GgufFormatException($"{path}: metadata '{key}' has unknown value type {(uint)type}"),
        };

        private GgufValue ArrayValue(string key)
        {
            var elementType = (GgufValueType)U32();
            ulong count = U64();
            long minElement = elementType switch
            {
                GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
                GgufValueType.UInt16 or GgufValueType.Int16 => 2,
                GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
                GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 or GgufValueType.String => 8,
                GgufValueType.Array => throw new GgufFormatException($"{path}: metadata '{key}' is an array of arrays, which Loom does not read"),
                _ => throw new GgufFormatException($"{path}: metadata '{key}' is an array of unknown type {(uint)elementType}"),
            };
            if (count > (ulong)((length - Position) / minElement))
                throw new GgufFormatException($"{path}: metadata '{key}' claims {count} elements, more than the rest of the file can hold");
            int n = (int)count;
            object array = elementType switch
            {
                GgufValueType.UInt8 => Block<byte>(n, key),
                GgufValueType.Int8 => Block<sbyte>(n, key),
                GgufValueType.UInt16 => Block<ushort>(n, key),
                GgufValueType.Int16 => Block<short>(n, key),
                GgufValueType.UInt32 => Block<uint>(n, key),
                GgufValueType.Int32 => Block<int>(n, key),
                GgufValueType.Float32 => Block<float>(n, key),
                GgufValueType.UInt64 => Block<ulong>(n, key),
                GgufValueType.Int64 => Block<long>(n, key),
                GgufValueType.Float64 => Block<double>(n, key),
                GgufValueType.Bool => Block<byte>(n, key).Select(b => b != 0).ToArray(),
                _ => Strings(n),
            };
            return new GgufValue(GgufValueType.Array, array, elementType);
        }

        private T[] Block<T>(int n, string key) where T : unmanaged
        {
            Need((long)n * sizeof(T), key);
            var result = new T[n];
            new ReadOnlySpan<T>(start + Position, n).CopyTo(result);
            Position += (long)n * sizeof(T);
            return result;
        }

        private string[] Strings(int n)
        {
            var result = new string[n];
            for (int i = 0; i < n; i++) result[i] = String();
            return result;
        }
    }
}
