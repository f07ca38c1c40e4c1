using System.Runtime.Intrinsics.X86;

namespace Loom.Core.Kernels;

/// <summary>Instruction-set paths of the matrix kernels; tests run each one this CPU supports side by side.</summary>
internal enum KernelIsa
{
    /// <summary>Plain C#: runs anywhere.</summary>
    Portable,
    /// <summary>AVX2 + FMA (256-bit integer maddubs/madd dots; AVX-VNNI's vpdpbusd when present).</summary>
    Avx2,
    /// <summary>AVX-512 F/BW: the 32-wide block types and float types two blocks per 512-bit register, Q4_0/Q5_0/Q8_0 in sixteen-row tiles from 16 tokens; K-quants and the Q4_0/Q5_0/Q8_0 one-token kernels use the 256-bit code.</summary>
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

    /// <summary>
    /// The path Multiply uses: the widest one supported, except that AMD family 19h (Zen 4) runs 512-bit integer
    /// operations as two 256-bit halves and measured its AVX2 kernels 10–20% faster. LOOM_KERNEL_ISA
    /// (portable, avx2, avx512) overrides the choice when the CPU supports the named path.
    /// </summary>
    public static KernelIsa Best { get; } = Choose();

    private static KernelIsa Choose()
    {
        var requested = Environment.GetEnvironmentVariable("LOOM_KERNEL_ISA");
        if (Enum.TryParse<KernelIsa>(requested, ignoreCase: true, out var isa) && Enum.IsDefined(isa) && IsSupported(isa))
            return isa;
        if (IsSupported(KernelIsa.Avx512) && !IsAmdZen4()) return KernelIsa.Avx512;
        return IsSupported(KernelIsa.Avx2) ? KernelIsa.Avx2 : KernelIsa.Portable;
    }

    private static bool IsAmdZen4()
    {
        if (!X86Base.IsSupported) return false;
        var (_, vendor1, vendor3, vendor2) = X86Base.CpuId(0, 0);
        bool amd = vendor1 == 0x68747541 && vendor2 == 0x69746e65 && vendor3 == 0x444d4163; // "AuthenticAMD"
        if (!amd) return false;
        int signature = X86Base.CpuId(1, 0).Eax;
        int family = (signature >> 8) & 0xF;
        if (family == 0xF) family += (signature >> 20) & 0xFF;
        return family == 0x19;
    }
}
