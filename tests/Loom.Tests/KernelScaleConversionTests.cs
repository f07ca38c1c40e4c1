using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Loom.Core.Kernels;
using Loom.Core.Quantization;

namespace Loom.Tests;

/// <summary>The kernels' integer fast paths for fp16 values against the general conversion.</summary>
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

    /// <summary>
    /// Both ways the F16 kernels read finite halves, at both widths, for every finite half: shifted into place
    /// (w·2^-112, subnormal halves as denormal floats) and rebased (w·2^-16, never denormal, taken on Intel where
    /// denormal FMA inputs are slow). Each, times its scale, must be exactly the half's value (the rebased −0 is +0, which
    /// no sum that starts at +0 can tell apart).
    /// </summary>
    [Fact]
    public void ShiftedAndRebasedHalvesAreExactForEveryFiniteHalf()
    {
        if (!Avx2.IsSupported || !Fma.IsSupported) return;
        var finite = Enumerable.Range(0, 65536).Where(b => (b & 0x7C00) != 0x7C00).ToArray();
        var ways = new (string Name, float Scale, Func<Vector256<int>, Vector256<float>> Eight, Func<Vector512<int>, Vector512<float>>? Sixteen)[]
        {
            ("shifted", 5.192296858534828e33f, FloatKernels.ShiftedHalves, Avx512F.IsSupported ? FloatKernels.ShiftedHalves : null),
            ("rebased", 65536f, FloatKernels.RebasedHalves, Avx512F.IsSupported ? FloatKernels.RebasedHalves : null),
        };
        foreach (var (name, scale, eight, sixteen) in ways)
        {
            var signExtended = new int[16];
            for (int start = 0; start < finite.Length; start += 16)
            {
                for (int k = 0; k < 16; k++) signExtended[k] = (short)finite[Math.Min(start + k, finite.Length - 1)];
                var low = eight(Vector256.Create(signExtended.AsSpan(0, 8)));
                var high = eight(Vector256.Create(signExtended.AsSpan(8, 8)));
                var wide = sixteen?.Invoke(Vector512.Create(signExtended));
                for (int k = 0; k < 16; k++)
                {
                    float expected = (float)BitConverter.UInt16BitsToHalf((ushort)signExtended[k]);
                    float raw = k < 8 ? low[k] : high[k - 8];
                    bool exact = name == "rebased" && expected == 0
                        ? raw == 0
                        : BitConverter.SingleToInt32Bits(raw * scale) == BitConverter.SingleToInt32Bits(expected);
                    Assert.True(exact,
                        $"{name} 0x{(ushort)signExtended[k]:x4}: {raw} · {scale} = {raw * scale}, expected {expected}");
                    if (name == "rebased") Assert.True(float.IsNormal(raw) || raw == 0, $"rebased 0x{(ushort)signExtended[k]:x4} is {raw}");
                    if (wide is { } w)
                        Assert.Equal(BitConverter.SingleToInt32Bits(raw), BitConverter.SingleToInt32Bits(w[k]));
                }
            }
        }
    }
}
