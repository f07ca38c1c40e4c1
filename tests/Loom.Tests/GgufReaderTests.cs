using Loom.Core;
using Loom.Models.Gguf;

namespace Loom.Tests;

public class GgufReaderTests
{
    [Fact]
    public void ReadsStories260KMetadataAndTensors()
    {
        using var file = GgufFile.Open(SharedData.PathTo("models/stories260K/stories260K.gguf"));
        Assert.Equal(3u, file.Version);
        Assert.Equal("llama", file.GetString("general.architecture"));
        Assert.Equal(64, file.GetInteger("llama.embedding_length"));
        Assert.Equal(5, file.GetInteger("llama.block_count"));
        Assert.Equal(512, file.GetArray<string>("tokenizer.ggml.tokens")!.Length);
        var embedding = file.GetTensor("token_embd.weight");
        Assert.Equal(GgmlType.F32, embedding.Type);
        Assert.Equal(new long[] { 64, 512 }, embedding.Dimensions);
        Assert.Equal(0, embedding.DataOffset % file.Alignment);
    }

    [Fact]
    public void F16CopyDescribesTheSameTensors()
    {
        using var f32 = GgufFile.Open(SharedData.PathTo("models/stories260K/stories260K.gguf"));
        using var f16 = GgufFile.Open(SharedData.PathTo("models/stories260K/stories260K-f16.gguf"));
        Assert.Equal(f32.Tensors.Select(t => t.Name).Order(), f16.Tensors.Select(t => t.Name).Order());
        Assert.Contains(f16.Tensors, t => t.Type == GgmlType.F16);
    }

    [Fact]
    public void TruncatedFileIsRejectedWithAClearError()
    {
        var source = File.ReadAllBytes(SharedData.PathTo("models/stories260K/stories260K.gguf"));
        foreach (int length in new[] { 10, 30, 200, 5000, source.Length / 2, source.Length - 1 })
        {
            var path = TempFile(source.AsSpan(0, length));
            var error = Assert.Throws<GgufFormatException>(() => GgufFile.Open(path));
            Assert.Contains(path, error.Message);
        }
    }

    [Fact]
    public void WrongMagicAndVersionAreRejected()
    {
        var source = File.ReadAllBytes(SharedData.PathTo("models/stories260K/stories260K.gguf"));
        var badMagic = (byte[])source.Clone();
        badMagic[0] = (byte)'X';
        Assert.Contains("not a GGUF file", Assert.Throws<GgufFormatException>(() => GgufFile.Open(TempFile(badMagic))).Message);
        var badVersion = (byte[])source.Clone();
        badVersion[4] = 99;
        Assert.Contains("version 99", Assert.Throws<GgufFormatException>(() => GgufFile.Open(TempFile(badVersion))).Message);
    }

    [Fact]
    public void AbsurdCountsAreRejectedWithoutHugeAllocations()
    {
        var source = File.ReadAllBytes(SharedData.PathTo("models/stories260K/stories260K.gguf"));
        var hugeTensorCount = (byte[])source.Clone();
        BitConverter.GetBytes(ulong.MaxValue / 2).CopyTo(hugeTensorCount, 8);
        Assert.Contains("tensor count", Assert.Throws<GgufFormatException>(() => GgufFile.Open(TempFile(hugeTensorCount))).Message);
        var hugeKvCount = (byte[])source.Clone();
        BitConverter.GetBytes(1UL << 40).CopyTo(hugeKvCount, 16);
        Assert.Contains("metadata count", Assert.Throws<GgufFormatException>(() => GgufFile.Open(TempFile(hugeKvCount))).Message);
        // The first key's length field follows the header: make it claim more bytes than the file has.
        var hugeString = (byte[])source.Clone();
        BitConverter.GetBytes(1UL << 50).CopyTo(hugeString, 24);
        Assert.Contains("string length", Assert.Throws<GgufFormatException>(() => GgufFile.Open(TempFile(hugeString))).Message);
    }

    /// <summary>Tensors whose data overlap are rejected: the loader reorganises some tensors in place, so each must own its bytes.</summary>
    [Fact]
    public void OverlappingTensorDataIsRejected()
    {
        var source = File.ReadAllBytes(SharedData.PathTo("models/stories260K/stories260K.gguf"));
        GgufTensorInfo first, second;
        using (var file = GgufFile.Open(SharedData.PathTo("models/stories260K/stories260K.gguf")))
        {
            var ordered = file.Tensors.OrderBy(t => t.DataOffset).ToArray();
            (first, second) = (ordered[0], ordered[1]);
            Assert.True(second.ByteSize <= source.Length - first.DataOffset);
            // the second tensor's description: name, dimension count, dimensions, type, then its offset relative to the data start
            var name = System.Text.Encoding.UTF8.GetBytes(second.Name);
            int at = source.AsSpan().IndexOf(name) + name.Length + 4 + 8 * second.Dimensions.Length + 4;
            long dataStart = file.DataStart;
            Assert.Equal(second.DataOffset - dataStart, BitConverter.ToInt64(source, at));
            var overlapping = (byte[])source.Clone();
            BitConverter.GetBytes(first.DataOffset - dataStart).CopyTo(overlapping, at);
            var error = Assert.Throws<GgufFormatException>(() => GgufFile.Open(TempFile(overlapping)));
            Assert.Contains("overlap", error.Message);
            Assert.Contains(second.Name, error.Message);
        }
    }

    [Fact]
    public void MissingFileGivesFileNotFound()
    {
        Assert.Throws<FileNotFoundException>(() => GgufFile.Open("/nonexistent/model.gguf"));
    }

    internal static string TempFile(ReadOnlySpan<byte> bytes)
    {
        var path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"loom-test-{Guid.NewGuid():N}.gguf");
        File.WriteAllBytes(path, bytes.ToArray());
        return path;
    }
}
