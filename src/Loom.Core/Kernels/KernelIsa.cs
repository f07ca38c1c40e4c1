using System.Runtime.Intrinsics.X86;

namespace Loom.Core.Kernels;

/// <summary>Instruction-set paths of the matrix kernels; tests run each one this CPU supports side by side.</summary>
internal enum KernelIsa
{
    /// <summary>Plain C#: runs anywhere.</summary>
    Portable,
    /// <summary>AVX2 + FMA (256-bit integer maddubs/madd dots; AVX-VNNI's vpdpbusd when present).</summary>
    Avx2,
    /// <summary>AVX-512 F/BW: the 32-wide block types and float types two blocks per 512-bit register; K-quants use the AVX2 kernels.</summary>
    Avx512,
}

internal static class KernelIsaSupport
{
    public static bool IsSupported(KernelIsa isa) => isa switch
    {
        KernelIsa.Portable => true,
        KernelIsa.Avx2 => Avx2.IsSupported && Fma.IsSupported,
        KernelIsa.Avx512 => Avx2.IsSupported && Fma.IsSupported && Avx512F.IsSupported && Avx512BW.IsSupported,
        _ => false,
    };

    public static KernelIsa Best { get; } =
        IsSupported(KernelIsa.Avx512) ? KernelIsa.Avx512 : IsSupported(KernelIsa.Avx2) ? KernelIsa.Avx2 : KernelIsa.Portable;
}
