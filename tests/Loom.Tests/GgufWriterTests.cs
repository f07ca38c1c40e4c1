using System.Runtime.InteropServices;
using Loom.Core;
using Loom.Models.Gguf;

namespace Loom.Tests;

public class GgufWriterTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("loom-writer-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private string PathFor(string name) => Path.Combine(_folder, name);

    public static TheoryData<GgufValue> EveryValueType() =>
    [
        new(GgufValueType.UInt8, (byte)250),
        new(GgufValueType.Int8, (sbyte)-100),
        new(GgufValueType.UInt16, (ushort)65000),
        new(GgufValueType.Int16, (short)-32000),
        new(GgufValueType.UInt32, 4_000_000_000u),
        new(GgufValueType.Int32, -2_000_000_000),
        new(GgufValueType.Float32, 3.25e-7f),
        new(GgufValueType.Bool, true),
        new(GgufValueType.Bool, false),
        new(GgufValueType.String, "héllo wörld 日本 🦙"),
        new(GgufValueType.String, ""),
        new(GgufValueType.UInt64, ulong.MaxValue - 5),
        new(GgufValueType.Int64, long.MinValue + 7),
        new(GgufValueType.Float64, Math.PI),
        new(GgufValueType.Array, new byte[] { 0, 1, 255 }, GgufValueType.UInt8),
        new(GgufValueType.Array, new sbyte[] { -128, 0, 127 }, GgufValueType.Int8),
        new(GgufValueType.Array, new ushort[] { 1, 65535 }, GgufValueType.UInt16),
        new(GgufValueType.Array, new short[] { -32768, 32767 }, GgufValueType.Int16),
        new(GgufValueType.Array, new uint[] { 0, uint.MaxValue }, GgufValueType.UInt32),
        new(GgufValueType.Array, new[] { int.MinValue, 0, int.MaxValue }, GgufValueType.Int32),
        new(GgufValueType.Array, new[] { -1.5f, float.Epsilon, float.MaxValue }, GgufValueType.Float32),
        new(GgufValueType.Array, new[] { true, false, true }, GgufValueType.Bool),
        new(GgufValueType.Array, new[] { "a", "", "▁the", "Ġworld", "<0x0A>" }, GgufValueType.String),
        new(GgufValueType.Array, new[] { 0UL, ulong.MaxValue }, GgufValueType.UInt64),
        new(GgufValueType.Array, new[] { long.MinValue, long.MaxValue }, GgufValueType.Int64),
        new(GgufValueType.Array, new[] { double.MinValue, -0.0, 1e-300 }, GgufValueType.Float64),
        new(GgufValueType.Array, Array.Empty<int>(), GgufValueType.Int32),
    ];

    [Theory]
    [MemberData(nameof(EveryValueType))]
    public void MetadataOfEveryTypeRoundTrips(GgufValue value)
    {
        var path = PathFor("meta.gguf");
        new GgufWriter().AddMetadata("test.value", value).Add("test.after", "sentinel").WriteTo(path);

        using var file = GgufFile.Open(path);
        var read = file.Find("test.value")!;
        Assert.Equal(value.Type, read.Type);
        if (value.IsArray)
        {
            Assert.Equal(value.ElementType, read.ElementType);
            Assert.Equal((System.Collections.IEnumerable)value.Value, (System.Collections.IEnumerable)read.Value);
        }
        else
        {
            Assert.Equal(value.Value, read.Value);
        }
        // A value read with the wrong length would shift everything after it.
        Assert.Equal("sentinel", file.GetString("test.after"));
        Assert.Equal(new[] { "general.alignment", "test.value", "test.after" }, file.MetadataKeys);
    }

    [Fact]
    public void TensorsOfSeveralTypesRoundTripAlignedAndByteExact()
    {
        var random = new Random(1234);
        float[] vector = Enumerable.Range(0, 7).Select(_ => (float)random.NextDouble()).ToArray();
        float[] matrix = Enumerable.Range(0, 64 * 3).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        byte[] q8 = new byte[GgmlTypeInfo.BlockBytes(GgmlType.Q8_0) * 2 * 5];
        byte[] q4k = new byte[GgmlTypeInfo.BlockBytes(GgmlType.Q4_K) * 3];
        random.NextBytes(q8);
        random.NextBytes(q4k);

        var path = PathFor("tensors.gguf");
        new GgufWriter()
            .Add("general.architecture", "test")
            .AddF32("odd_sized", [7], vector)
            .AddF16("half", [64, 3], matrix)
            .AddTensor("quant.q8", GgmlType.Q8_0, [64, 5], q8)
            .AddTensor("quant.q4k", GgmlType.Q4_K, [256, 1, 3], q4k)
            .AddF32("matrix", [64, 3], matrix)
            .WriteTo(path);

        using var file = GgufFile.Open(path);
        Assert.Equal(3u, file.Version);
        Assert.Equal(32u, file.Alignment);
        Assert.Equal(32u, file.Find("general.alignment")!.Value);
        Assert.Equal(new[] { "odd_sized", "half", "quant.q8", "quant.q4k", "matrix" }, file.Tensors.Select(t => t.Name));
        foreach (var t in file.Tensors) Assert.Equal(0, t.DataOffset % 32);

        Assert.Equal(vector, MemoryMarshal.Cast<byte, float>(file.Data(file.GetTensor("odd_sized"))).ToArray());
        Assert.Equal(matrix, MemoryMarshal.Cast<byte, float>(file.Data(file.GetTensor("matrix"))).ToArray());
        Assert.Equal(q8, file.Data(file.GetTensor("quant.q8")).ToArray());
        Assert.Equal(q4k, file.Data(file.GetTensor("quant.q4k")).ToArray());
        var q4kInfo = file.GetTensor("quant.q4k");
        Assert.Equal(GgmlType.Q4_K, q4kInfo.Type);
        Assert.Equal(new long[] { 256, 1, 3 }, q4kInfo.Dimensions);

        var half = file.GetTensor("half");
        Assert.Equal(GgmlType.F16, half.Type);
        Assert.Equal(new long[] { 64, 3 }, half.Dimensions);
        var halves = MemoryMarshal.Cast<byte, Half>(file.Data(half));
        for (int i = 0; i < matrix.Length; i++) Assert.Equal((Half)matrix[i], halves[i]);
    }

    [Fact]
    public void F16ConversionRoundsToNearestEven()
    {
        // 1 + 2^-11 lies exactly between 1 and the next half (1 + 2^-10): ties go to the even mantissa, 1.
        // 1 + 3·2^-11 lies between 1 + 2^-10 and 1 + 2^-9: ties go to 1 + 2^-9.
        float[] values = [1f + MathF.Pow(2, -11), 1f + 3 * MathF.Pow(2, -11), 65520f, -0f, 6e-8f];
        ushort[] expected = [0x3C00, 0x3C02, 0x7C00, 0x8000, 0x0001];
        var path = PathFor("half.gguf");
        new GgufWriter().AddF16("h", [5], values).WriteTo(path);
        using var file = GgufFile.Open(path);
        Assert.Equal(expected, MemoryMarshal.Cast<byte, ushort>(file.Data(file.GetTensor("h"))).ToArray());
    }

    [Fact]
    public void CustomAlignmentIsRecordedAndHonoured()
    {
        var path = PathFor("aligned.gguf");
        new GgufWriter(alignment: 64).AddF32("a", [3], [1, 2, 3]).AddF32("b", [5], [4, 5, 6, 7, 8]).WriteTo(path);
        using var file = GgufFile.Open(path);
        Assert.Equal(64u, file.Alignment);
        Assert.All(file.Tensors, t => Assert.Equal(0, t.DataOffset % 64));
        Assert.Equal(0, file.DataStart % 64);
        Assert.Equal(new float[] { 4, 5, 6, 7, 8 }, MemoryMarshal.Cast<byte, float>(file.Data(file.GetTensor("b"))).ToArray());
    }

    [Fact]
    public void StreamedTensorLargerThanTheBuffersIsWrittenWhole()
    {
        // 24 MiB produced in chunks by the callback: the writer must not need it in memory at once.
        const int rows = 6144, cols = 1024;
        var path = PathFor("big.gguf");
        new GgufWriter().AddTensor("big", GgmlType.F32, [cols, rows], stream =>
        {
            var row = new float[cols];
            for (int r = 0; r < rows; r++)
            {
                Array.Fill(row, r);
                stream.Write(MemoryMarshal.AsBytes(row.AsSpan()));
            }
        }).WriteTo(path);
        using var file = GgufFile.Open(path);
        var data = MemoryMarshal.Cast<byte, float>(file.Data(file.GetTensor("big")));
        Assert.Equal(rows * cols, data.Length);
        Assert.Equal(0f, data[0]);
        Assert.Equal(rows - 1, data[^1]);
        Assert.Equal(1234f, data[1234 * cols + 17]);
    }

    [Fact]
    public void FailedWriteLeavesNoFileBehindAndKeepsTheOldOne()
    {
        var path = PathFor("atomic.gguf");
        new GgufWriter().Add("version", 1).WriteTo(path);
        var broken = new GgufWriter().Add("version", 2).AddTensor("short", GgmlType.F32, [16], stream => stream.Write(new byte[10]));
        var error = Assert.Throws<InvalidOperationException>(() => broken.WriteTo(path));
        Assert.Contains("'short'", error.Message);
        Assert.Equal(new[] { "atomic.gguf" }, Directory.GetFiles(_folder).Select(Path.GetFileName));
        using var file = GgufFile.Open(path);
        Assert.Equal(1, file.GetInteger("version"));
    }

    [Fact]
    public void InvalidInputIsRejectedWithClearMessages()
    {
        var writer = new GgufWriter().Add("k", 1).AddF32("t", [2], [1, 2]);
        Assert.Contains("already added", Assert.Throws<ArgumentException>(() => writer.Add("k", 2)).Message);
        Assert.Contains("already added", Assert.Throws<ArgumentException>(() => writer.AddF32("t", [2], [1, 2])).Message);
        Assert.Contains("general.alignment", Assert.Throws<ArgumentException>(() => writer.Add("general.alignment", 64u)).Message);
        Assert.Contains("declared Int32", Assert.Throws<ArgumentException>(() => writer.AddMetadata("x", new GgufValue(GgufValueType.Int32, 1u))).Message);
        Assert.Contains("array of Float32", Assert.Throws<ArgumentException>(() =>
            writer.AddMetadata("y", new GgufValue(GgufValueType.Array, new[] { 1 }, GgufValueType.Float32))).Message);
        Assert.Contains("block size 32", Assert.Throws<ArgumentException>(() => writer.AddTensor("q", GgmlType.Q8_0, [48], new byte[51])).Message);
        Assert.Contains("needs 34 bytes", Assert.Throws<ArgumentException>(() => writer.AddTensor("q", GgmlType.Q8_0, [32], new byte[33])).Message);
        Assert.Contains("6 elements", Assert.Throws<ArgumentException>(() => writer.AddF32("m", [2, 3], [1, 2, 3])).Message);
        Assert.Contains("dimensions", Assert.Throws<ArgumentException>(() => writer.AddF32("d", [1, 1, 1, 1, 1], [1])).Message);
        Assert.Contains("not positive", Assert.Throws<ArgumentException>(() => writer.AddF32("z", [0], [])).Message);
        Assert.Contains("longer than 63", Assert.Throws<ArgumentException>(() => writer.AddF32(new string('n', 64), [1], [1])).Message);
        Assert.Contains("unknown", Assert.Throws<ArgumentException>(() => writer.AddTensor("iq", GgmlType.IQ2_XXS, [256], new byte[66])).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new GgufWriter(alignment: 24));
    }
}
