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
    /// The path Multiply uses: the widest one supported. (Zen 4, which runs 512-bit integer operations as two halves,
    /// once took the AVX2 path; since the one-token Q4_0/Q5_0/Q8_0 and K-quant kernels are 256-bit on both paths, the
    /// AVX-512 path measured equal or faster there: sixteen-row tiles +3–26% for 32 sequences, F16 decode level.)
    /// LOOM_KERNEL_ISA (portable, avx2, avx512) overrides the choice when the CPU supports the named path.
    /// </summary>
    public static KernelIsa Best { get; } = Choose();

    /// <summary>
    /// Whether the CPU is Intel's. How far ahead the one-token kernels should fetch weights was measured per vendor:
    /// on an Intel Xeon (family 6 model 207) the 512-bit kernels gained 14–39% from fetches that AMD's Zen 4 measured
    /// slower with (F16), and fetches twice as far ahead as Zen 3's best gained a further 7–13% (Q8_0). Intel also
    /// takes a microcode assist for every denormal FMA input, so its F16 kernels read halves rebased
    /// (<see cref="FloatKernels.RawHalvesAvoidDenormals"/>).
    /// </summary>
    public static bool IntelCpu { get; } = X86Base.IsSupported && IsIntel();

    private static bool IsIntel()
    {
        // the vendor string "GenuineIntel" in EBX, EDX, ECX
        var (_, ebx, ecx, edx) = X86Base.CpuId(0, 0);
        return ebx == 0x756E6547 && edx == 0x49656E69 && ecx == 0x6C65746E;
    }

    private static KernelIsa Choose()
    {
        var requested = Environment.GetEnvironmentVariable("LOOM_KERNEL_ISA");
        if (Enum.TryParse<KernelIsa>(requested, ignoreCase: true, out var isa) && Enum.IsDefined(isa) && IsSupported(isa))
            return isa;
        if (IsSupported(KernelIsa.Avx512)) return KernelIsa.Avx512;
        return IsSupported(KernelIsa.Avx2) ? KernelIsa.Avx2 : KernelIsa.Portable;
    }
}
