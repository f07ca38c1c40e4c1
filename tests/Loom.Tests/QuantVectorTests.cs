using Loom.Core;
using Loom.Core.Quantization;

namespace Loom.Tests;

/// <summary>Checks Loom's (de)quantizers against ggml's own output (shared/testvectors/ggml-quant, made by ggml's reference code).</summary>
public class QuantVectorTests
{
    private const string Folder = "testvectors/ggml-quant";

    private static IEnumerable<string> ManifestNames() =>
        File.ReadLines(SharedData.PathTo($"{Folder}/MANIFEST.tsv")).Where(l => l.Length > 0 && !l.StartsWith('#')).Select(l => l.Split('\t')[0]);

    public static TheoryData<string> ManifestTypes() => new(ManifestNames());

    private static float[] Input() => ReadFloats(SharedData.PathTo($"{Folder}/input.f32"));

    private static float[] ReadFloats(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var floats = new float[bytes.Length / 4];
        Buffer.BlockCopy(bytes, 0, floats, 0, bytes.Length);
        return floats;
    }

    private static (GgmlType Type, int BlockElems, int BlockBytes) ManifestEntry(string name)
    {
        foreach (var line in File.ReadLines(SharedData.PathTo($"{Folder}/MANIFEST.tsv")))
        {
            var f = line.Split('\t');
            if (f[0] == name) return ((GgmlType)uint.Parse(f[1]), int.Parse(f[2]), int.Parse(f[3]));
        }
        throw new InvalidOperationException($"{name} is not in the manifest");
    }

    [Fact]
    public void ManifestCoversTheTypesLoomClaims()
    {
        var names = ManifestNames().ToHashSet();
        foreach (var t in new[] { "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs" })
            Assert.Contains(t, names);
    }

    [Theory]
    [MemberData(nameof(ManifestTypes))]
    public void DequantizeIsBitIdenticalToGgml(string name)
    {
        var (type, blockElems, blockBytes) = ManifestEntry(name);
        Assert.Equal(blockElems, GgmlTypeInfo.BlockSize(type));
        Assert.Equal(blockBytes, GgmlTypeInfo.BlockBytes(type));
        var blocks = File.ReadAllBytes(SharedData.PathTo($"{Folder}/{name}.bin"));
        var expected = ReadFloats(SharedData.PathTo($"{Folder}/{name}.deq.f32"));
        var actual = new float[expected.Length];
        Dequantizer.Dequantize(type, blocks, actual);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                $"{name}[{i}]: ggml {expected[i]:R}, Loom {actual[i]:R}");
    }

    [Theory]
    [MemberData(nameof(ManifestTypes))]
    public void QuantizeIsByteIdenticalToGgml(string name)
    {
        var (type, _, _) = ManifestEntry(name);
        if (!Quantizer.IsSupported(type))
        {
            Assert.Throws<NotSupportedException>(() => Quantizer.Quantize(type, new float[256], new byte[4096]));
            return;
        }
        var expected = File.ReadAllBytes(SharedData.PathTo($"{Folder}/{name}.bin"));
        var input = Input();
        var actual = new byte[expected.Length];
        Assert.Equal(expected.Length, Quantizer.Quantize(type, input, actual));
        for (int i = 0; i < expected.Length; i++)
            Assert.True(expected[i] == actual[i], $"{name} byte {i}: ggml {expected[i]}, Loom {actual[i]}");
    }

    [Fact]
    public void QuantizerSupportsTheTypesGgufWritingNeeds()
    {
        foreach (var t in new[] { GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.F16, GgmlType.BF16, GgmlType.F32 })
            Assert.True(Quantizer.IsSupported(t), t.ToString());
    }

    [Fact]
    public void HalfAndBFloat16RoundTripAndRoundToNearestEven()
    {
        var input = Input();
        var half = new byte[input.Length * 2];
        var bf = new byte[input.Length * 2];
        Quantizer.Quantize(GgmlType.F16, input, half);
        Quantizer.Quantize(GgmlType.BF16, input, bf);
        var back = new float[input.Length];
        Dequantizer.Dequantize(GgmlType.F16, half, back);
        for (int i = 0; i < input.Length; i++) Assert.Equal((float)(Half)input[i], back[i]);
        Dequantizer.Dequantize(GgmlType.BF16, bf, back);
        for (int i = 0; i < input.Length; i++)
        {
            // bf16 keeps the top 16 bits; the error is at most half a unit in the last kept place.
            uint bits = BitConverter.SingleToUInt32Bits(input[i]);
            float ulp = BitConverter.UInt32BitsToSingle((bits & 0x7f800000) | 0x10000) - BitConverter.UInt32BitsToSingle(bits & 0x7f800000);
            Assert.True(MathF.Abs(back[i] - input[i]) <= ulp / 2, $"bf16[{i}]");
        }
        // Exact ties go to the even neighbour; NaN stays NaN.
        Assert.Equal(0x3f80, Fp.FloatToBFloat16(BitConverter.UInt32BitsToSingle(0x3f808000)));
        Assert.Equal(0x3f82, Fp.FloatToBFloat16(BitConverter.UInt32BitsToSingle(0x3f818000)));
        Assert.True(float.IsNaN(Fp.BFloat16ToFloat(Fp.FloatToBFloat16(float.NaN))));
        Assert.Equal(0x3c00, Fp.FloatToHalf(1.0f));
        Assert.Equal(0x3c00, Fp.FloatToHalf(BitConverter.UInt32BitsToSingle(0x3f801000))); // tie 1 + 2^-11 → even (1.0)
    }

    [Fact]
    public void HalfToFloatIsExactForEveryHalf()
    {
        for (int bits = 0; bits < 65536; bits++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)bits);
            float actual = Fp.HalfToFloat((ushort)bits);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(actual), $"half 0x{bits:x4}");
            else Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(actual), $"half 0x{bits:x4}: {actual} vs {expected}");
        }
    }

    [Fact]
    public void BadArgumentsAreRejectedWithClearErrors()
    {
        var e1 = Assert.Throws<NotSupportedException>(() => Dequantizer.Dequantize(GgmlType.IQ2_XXS, new byte[66], new float[256]));
        Assert.Contains("IQ2_XXS", e1.Message);
        var e2 = Assert.Throws<NotSupportedException>(() => Quantizer.Quantize(GgmlType.Q8_1, new float[256], new byte[288]));
        Assert.Contains("Q8_1", e2.Message);
        Assert.Throws<ArgumentException>(() => Dequantizer.Dequantize(GgmlType.Q4_0, new byte[17], new float[32]));
        Assert.Throws<ArgumentException>(() => Dequantizer.Dequantize(GgmlType.Q4_0, new byte[36], new float[40]));
        Assert.Throws<ArgumentException>(() => Quantizer.Quantize(GgmlType.Q8_0, new float[32], new byte[33]));
        Assert.Throws<ArgumentException>(() => Quantizer.Quantize(GgmlType.Q8_0, new float[31], new byte[34]));
    }

    [Fact]
    public void AllZeroBlocksQuantizeToZero()
    {
        foreach (var t in RoundTripTypes)
        {
            var bytes = new byte[GgmlTypeInfo.RowBytes(t, 256)];
            Quantizer.Quantize(t, new float[256], bytes);
            var back = new float[256];
            Dequantizer.Dequantize(t, bytes, back);
            Assert.All(back, v => Assert.Equal(0f, v));
        }
    }

    private static readonly GgmlType[] RoundTripTypes =
    [
        GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1,
        GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_NL, GgmlType.IQ4_XS,
    ];

    [Fact]
    public void RoundTripErrorIsWithinEachTypesResolution()
    {
        var rng = new Random(3);
        var x = new float[2048];
        for (int i = 0; i < x.Length; i++) x[i] = (float)((rng.NextDouble() * 2 - 1) * (i < 256 ? 0.01 : 1) + (i >= 1024 && i < 1280 ? 3 : 0));
        // Relative to the largest magnitude in the data; generous versions of each type's step size.
        var bound = new Dictionary<GgmlType, double>
        {
            [GgmlType.Q8_0] = 0.01, [GgmlType.Q4_0] = 0.15, [GgmlType.Q4_1] = 0.1, [GgmlType.Q5_0] = 0.08, [GgmlType.Q5_1] = 0.05,
            [GgmlType.Q2_K] = 0.6, [GgmlType.Q3_K] = 0.3, [GgmlType.Q4_K] = 0.15, [GgmlType.Q5_K] = 0.08, [GgmlType.Q6_K] = 0.04,
            [GgmlType.IQ4_NL] = 0.15, [GgmlType.IQ4_XS] = 0.15,
        };
        foreach (var t in RoundTripTypes)
        {
            var bytes = new byte[GgmlTypeInfo.RowBytes(t, x.Length)];
            Quantizer.Quantize(t, x, bytes);
            var back = new float[x.Length];
            Dequantizer.Dequantize(t, bytes, back);
            for (int blk = 0; blk < x.Length / 256; blk++)
            {
                double amax = 0, err = 0;
                for (int i = blk * 256; i < blk * 256 + 256; i++)
                {
                    amax = Math.Max(amax, Math.Abs(x[i]));
                    err = Math.Max(err, Math.Abs(x[i] - back[i]));
                }
                Assert.True(err <= bound[t] * amax, $"{t} block {blk}: max error {err} for max |x| {amax}");
            }
        }
    }
}
