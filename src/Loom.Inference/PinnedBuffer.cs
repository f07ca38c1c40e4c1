using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Loom.Inference;

/// <summary>A float array on the pinned object heap, so its address can be kept for the buffer's lifetime.</summary>
internal sealed unsafe class PinnedBuffer
{
    private readonly float[] _array;

    public PinnedBuffer(long length)
    {
        if (length > Array.MaxLength)
            throw new OutOfMemoryException($"a buffer of {length} floats exceeds the largest array .NET can hold; use a smaller context");
        _array = GC.AllocateArray<float>((int)Math.Max(length, 1), pinned: true);
        Pointer = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_array));
    }

    public float* Pointer { get; }
    public int Length => _array.Length;
    public Span<float> Span => _array;
}
