using System.Runtime.InteropServices;
using Loom.Core.IO;
using Loom.Models.Architectures;
using Loom.Tests.Conformance;

namespace Loom.Tests;

/// <summary>
/// The weight arena copies matrices exactly, on cache-line boundaries, within its capacity, and releases the source's
/// whole pages and no others; a model loaded into 2 MiB pages gives the logits of one left in the memory map, bit for bit.
/// </summary>
[Collection(ConformanceCollection.Name)]
public unsafe class WeightArenaTests(ConformanceModels models)
{
    [Fact]
    public void CopiesAreExactAlignedAndBoundedByTheCapacity()
    {
        var expected = new byte[5000];
        new Random(3).NextBytes(expected);
        // Unmanaged, page-aligned and a page longer than the copies, so that releasing its pages touches nothing else.
        int page = Environment.SystemPageSize;
        byte* source = (byte*)NativeMemory.AlignedAlloc((nuint)(page + 8192), (nuint)page);
        try
        {
            expected.CopyTo(new Span<byte>(source, expected.Length));
            using var arena = new WeightArena(10_000);
            Assert.Equal(WeightArena.HugePageBytes, arena.Capacity);
            byte* first = arena.CopyAndRelease(source, 100);
            byte* second = arena.CopyAndRelease(source + 100, 4900);
            Assert.Equal(0, (long)first % WeightArena.HugePageBytes);
            Assert.Equal(128, second - first); // the next cache line after the first copy
            Assert.Equal(128 + 4900, arena.Used);
            Assert.Equal(expected.AsSpan(0, 100).ToArray(), new ReadOnlySpan<byte>(first, 100).ToArray());
            Assert.Equal(expected.AsSpan(100).ToArray(), new ReadOnlySpan<byte>(second, 4900).ToArray());
            nint at = (nint)source;
            var full = Assert.Throws<InvalidOperationException>(() => arena.CopyAndRelease((byte*)at, WeightArena.HugePageBytes));
            Assert.Contains("holds", full.Message);
            Assert.Throws<ArgumentOutOfRangeException>(() => arena.CopyAndRelease((byte*)at, 0));
            arena.Dispose();
            Assert.Throws<ObjectDisposedException>(() => arena.CopyAndRelease((byte*)at, 1));
        }
        finally
        {
            NativeMemory.AlignedFree(source);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => new WeightArena(0));
    }

    /// <summary>Copies are made only where huge pages exist, and only of what fits in half the memory free now.</summary>
    [Fact]
    public void CopiesAreWorthwhileOnlyWhereHugePagesExistAndMemoryIsFree()
    {
        Assert.True(WeightArena.FitsFreeMemory(4 << 20, processLimit: 8 << 20, systemAvailable: null));
        Assert.False(WeightArena.FitsFreeMemory(5 << 20, processLimit: 8 << 20, systemAvailable: null));
        Assert.False(WeightArena.FitsFreeMemory(5 << 20, processLimit: 64 << 20, systemAvailable: 8 << 20));
        Assert.False(WeightArena.FitsFreeMemory(5 << 20, processLimit: 8 << 20, systemAvailable: 64 << 20));
        Assert.Equal(WeightArena.HugePagesAvailable, WeightArena.Worthwhile(1 << 20));
        Assert.False(WeightArena.Worthwhile(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 2 + 1));
        if (OperatingSystem.IsLinux())
        {
            long? available = LinuxMemory.AvailableBytes();
            Assert.NotNull(available);
            Assert.True(available > 1 << 20, $"MemAvailable read as {available} bytes");
            // A gigabyte of slack for memory freed between the two readings.
            Assert.False(WeightArena.Worthwhile(available!.Value / 2 + (1L << 30)));
        }
    }

    /// <summary>
    /// On Linux the released pages of private anonymous memory read back as zeros, which shows exactly which were
    /// released: every whole page inside the copied range (a large copy goes in 16 MiB pieces, so their seams are
    /// covered too), never the partial pages at its ends that neighbours share.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void OnlyTheWholePagesOfTheSourceAreReleased(bool overTwoPieces)
    {
        if (!OperatingSystem.IsLinux()) return;
        int page = Environment.SystemPageSize;
        int wholePages = overTwoPieces ? (32 << 20) / page + 3 : 3;
        long blockBytes = (wholePages + 2L) * page;
        byte* block = (byte*)NativeMemory.AlignedAlloc((nuint)blockBytes, (nuint)page);
        try
        {
            var all = new Span<byte>(block, (int)blockBytes);
            for (int i = 0; i < all.Length; i++) all[i] = (byte)(i % 251 + 1);
            var expected = all.ToArray();
            using var arena = new WeightArena(blockBytes);
            // From the middle of the first page to the middle of the last: the pages between are whole.
            long bytes = (wholePages + 1L) * page;
            byte* copy = arena.CopyAndRelease(block + page / 2, bytes);
            Assert.True(expected.AsSpan(page / 2, (int)bytes).SequenceEqual(new ReadOnlySpan<byte>(copy, (int)bytes)));
            Assert.True(expected.AsSpan(0, page).SequenceEqual(all[..page]));
            Assert.True(all.Slice(page, wholePages * page).IndexOfAnyExcept((byte)0) < 0);
            Assert.True(expected.AsSpan((wholePages + 1) * page).SequenceEqual(all[((wholePages + 1) * page)..]));
        }
        finally
        {
            NativeMemory.AlignedFree(block);
        }
    }

    /// <summary>Interleaved (Q4_0, Q4_K/Q6_K) and F16 models, tied and untied heads: same logits either way; the file is never changed.</summary>
    [Theory]
    [InlineData("llama-spm", "Q4_0")]
    [InlineData("llama-bpe", "Q4_K_M")]
    [InlineData("qwen2", "F16")]
    public void HugePagesGiveTheLogitsOfTheMemoryMap(string modelName, string quant)
    {
        var spec = TestModelFactory.ByName(modelName);
        string path = quant == "F16" ? models.F16(spec) : models.Quantized(spec, quant);
        var before = File.ReadAllBytes(path);
        float[] mapped, copied;
        using (var model = TransformerModel.Load(path, new ModelLoadOptions { HugePages = false }))
        {
            Assert.Equal(0, model.HugePageWeightBytes);
            mapped = Logits(model);
        }
        using (var model = TransformerModel.Load(path))
        {
            copied = Logits(model);
            if (WeightArena.HugePagesAvailable)
            {
                // Every matrix but an untied token embedding, which a token only looks one row up in.
                long matrices = model.File.Tensors.Where(t => t.Dimensions.Length == 2 && (spec.TiedOutput || t.Name != "token_embd.weight")).Sum(t => t.ByteSize);
                Assert.InRange(model.HugePageWeightBytes, matrices, matrices + 64L * model.File.Tensors.Count);
            }
            else Assert.Equal(0, model.HugePageWeightBytes);
        }
        Assert.Equal(mapped, copied);
        Assert.Equal(before, File.ReadAllBytes(path));
    }

    private static float[] Logits(TransformerModel model)
    {
        using var session = new Loom.Inference.InferenceSession(model, 16);
        return session.Evaluate([1, 5, 9, 2]).ToArray();
    }
}
