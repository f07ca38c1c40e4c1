using Loom.Models.Architectures;

namespace Loom.Inference;

/// <summary>
/// F32 keys and values of every layer for up to <see cref="Capacity"/> positions. Each layer and key/value head is a
/// [position, head dimension] block, so attention reads one head's history contiguously.
/// </summary>
internal sealed unsafe class KvCache
{
    private readonly PinnedBuffer[] _keys;
    private readonly PinnedBuffer[] _values;
    private readonly long _keyHeadStride;
    private readonly long _valueHeadStride;

    public KvCache(ModelConfig config, int capacity)
    {
        Capacity = capacity;
        KeyLength = config.KeyLength;
        ValueLength = config.ValueLength;
        _keyHeadStride = (long)capacity * KeyLength;
        _valueHeadStride = (long)capacity * ValueLength;
        _keys = new PinnedBuffer[config.LayerCount];
        _values = new PinnedBuffer[config.LayerCount];
        for (int layer = 0; layer < config.LayerCount; layer++)
        {
            _keys[layer] = new PinnedBuffer(_keyHeadStride * config.HeadCountKv);
            _values[layer] = new PinnedBuffer(_valueHeadStride * config.HeadCountKv);
        }
    }

    public int Capacity { get; }
    public int KeyLength { get; }
    public int ValueLength { get; }

    /// <summary>Keys of one head: row p (KeyLength floats) is position p.</summary>
    public float* Keys(int layer, int head) => _keys[layer].Pointer + head * _keyHeadStride;

    /// <summary>Values of one head: row p (ValueLength floats) is position p.</summary>
    public float* Values(int layer, int head) => _values[layer].Pointer + head * _valueHeadStride;
}
