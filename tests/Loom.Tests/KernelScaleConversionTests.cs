using Loom.Core.Kernels;
using Loom.Core.Quantization;

namespace Loom.Tests;

/// <summary>The K-quant kernels' integer fast path for fp16 super-block scales against the general conversion.</summary>
public unsafe class KernelScaleConversionTests
{
    [Fact]
    public void ReadScaleMatchesReadHalfForEveryHalf()
    {
        int mismatches = 0;
        string first = "";
        for (int bits = 0; bits <= ushort.MaxValue; bits++)
        {
            ushort h = (ushort)bits;
            int expected = BitConverter.SingleToInt32Bits(Fp.ReadHalf((byte*)&h));
            int got = BitConverter.SingleToInt32Bits(KQuantKernels.ReadScale((byte*)&h));
            if (expected != got && mismatches++ == 0)
                first = $"0x{bits:x4}: 0x{got:x8}, ReadHalf 0x{expected:x8}";
        }
        Assert.True(mismatches == 0, $"{mismatches} halves differ, first {first}");
    }
}
