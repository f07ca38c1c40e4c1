using System.Numerics.Tensors;
using Loom.Core.Kernels;
using Loom.Models.Architectures;

namespace Loom.Inference;

/// <summary>How a KV cache stores keys and values (llama.cpp's <c>--cache-type-k/-v</c>).</summary>
public enum KvCacheType
{
    /// <summary>IEEE half precision, llama.cpp's default: half the memory and half the bytes attention reads.</summary>
    F16,
    /// <summary>Single precision: attention sees exactly the keys and values the projections computed.</summary>
    F32,
}

/// <summary>
/// Keys and values of every layer for up to <see cref="Capacity"/> positions, as F32 or F16 elements. Each layer and
/// key/value head is a [position, head dimension] block, so attention reads one head's history contiguously.
/// </summary>
internal sealed unsafe class KvCache
{
    // The pinned arrays, kept alive here, and each layer's keys and values in them; one head's block follows another.
    private readonly Array[] _blocks;
    private readonly nint[] _keys;
    private readonly nint[] _values;
    private readonly long _keyHeadBytes;
    private readonly long _valueHeadBytes;

    public KvCache(ModelConfig config, int capacity, KvCacheType type)
    {
        if (!Enum.IsDefined(type)) throw new ArgumentOutOfRangeException(nameof(type), type, "unknown KV cache type");
        Type = type;
        Capacity = capacity;
        KeyLength = config.KeyLength;
        ValueLength = config.ValueLength;
        long keyElements = (long)capacity * KeyLength, valueElements = (long)capacity * ValueLength;
        _keyHeadBytes = keyElements * ElementSize(type);
        _valueHeadBytes = valueElements * ElementSize(type);
        _blocks = new Array[2 * config.LayerCount];
        _keys = new nint[config.LayerCount];
        _values = new nint[config.LayerCount];
        for (int layer = 0; layer < config.LayerCount; layer++)
        {
            _keys[layer] = Allocate(2 * layer, keyElements * config.HeadCountKv);
            _values[layer] = Allocate(2 * layer + 1, valueElements * config.HeadCountKv);
        }
    }

    public KvCacheType Type { get; }
    public int Capacity { get; }
    public int KeyLength { get; }
    public int ValueLength { get; }

    /// <summary>
    /// Whether an F16 cache may hold an Inf or NaN (a projection beyond ±65504 rounds to Inf), so attention must take
    /// the general half conversion. Set by <see cref="Store"/>, never cleared.
    /// </summary>
    public bool HoldsNonFiniteHalves { get; private set; }

    /// <summary>Bytes one position takes in one layer (keys and values of every head).</summary>
    public static long BytesPerPosition(ModelConfig config, KvCacheType type) =>
        (long)config.HeadCountKv * (config.KeyLength + config.ValueLength) * ElementSize(type);

    public static int ElementSize(KvCacheType type) => type == KvCacheType.F16 ? sizeof(ushort) : sizeof(float);

    /// <summary>Keys of one head: row p (KeyLength elements of <see cref="Type"/>) is position p.</summary>
    public void* Keys(int layer, int head) => (byte*)_keys[layer] + head * _keyHeadBytes;

    /// <summary>Values of one head: row p (ValueLength elements of <see cref="Type"/>) is position p.</summary>
    public void* Values(int layer, int head) => (byte*)_values[layer] + head * _valueHeadBytes;

    /// <summary>
    /// Writes one head's key and value at <paramref name="position"/>, rounded to the cache's type (to nearest, ties to
    /// even; beyond ±65504 an F16 element becomes ±Inf, as in llama.cpp's F16 cache).
    /// </summary>
    public void Store(int layer, int head, long position, float* key, float* value)
    {
        if (Type == KvCacheType.F32)
        {
            new ReadOnlySpan<float>(key, KeyLength).CopyTo(new Span<float>((float*)Keys(layer, head) + position * KeyLength, KeyLength));
            new ReadOnlySpan<float>(value, ValueLength).CopyTo(new Span<float>((float*)Values(layer, head) + position * ValueLength, ValueLength));
            return;
        }
        var keyHalves = (Half*)Keys(layer, head) + position * KeyLength;
        var valueHalves = (Half*)Values(layer, head) + position * ValueLength;
        TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(key, KeyLength), new Span<Half>(keyHalves, KeyLength));
        TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(value, ValueLength), new Span<Half>(valueHalves, ValueLength));
        if (!HoldsNonFiniteHalves &&
            !(FloatKernels.HalvesFinite((ushort*)keyHalves, KeyLength) && FloatKernels.HalvesFinite((ushort*)valueHalves, ValueLength)))
            HoldsNonFiniteHalves = true;
    }

    /// <summary>A zeroed pinned array of <paramref name="elements"/> elements of the cache's type, kept alive in slot <paramref name="slot"/>.</summary>
    private nint Allocate(int slot, long elements)
    {
        if (Type == KvCacheType.F16)
        {
            _blocks[slot] = PinnedBuffer.Allocate<Half>(elements, out var halves);
            return (nint)halves;
        }
        _blocks[slot] = PinnedBuffer.Allocate<float>(elements, out var floats);
        return (nint)floats;
    }
}
