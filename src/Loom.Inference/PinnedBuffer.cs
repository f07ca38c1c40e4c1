using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Loom.Inference;

/// <summary>A float array on the pinned object heap, so its address can be kept for the buffer's lifetime.</summary>
internal sealed unsafe class PinnedBuffer
{
    private readonly float[] _array;

    public PinnedBuffer(long length)
    {
        _array = Allocate<float>(length, out var pointer);
        Pointer = pointer;
    }

    /// <summary>
    /// A zeroed array of <paramref name="length"/> elements (at least one) on the pinned object heap, and its address,
    /// valid while the caller keeps the array alive.
    /// </summary>
    public static T[] Allocate<T>(long length, out T* pointer) where T : unmanaged
    {
        if (length > Array.MaxLength)
            throw new OutOfMemoryException($"a buffer of {length} elements of {sizeof(T)} bytes exceeds the largest array .NET can hold; use a smaller context");
        var array = GC.AllocateArray<T>((int)Math.Max(length, 1), pinned: true);
        pointer = (T*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
        return array;
    }

    public float* Pointer { get; }
    public int Length => _array.Length;
    public Span<float> Span => _array;
}
