using Loom.Core.Threading;
using Loom.Models.Architectures;

namespace Loom.Tests;

/// <summary>The two halves of the decode roofline: the weight bytes a token reads, and the memory read rate they are held to.</summary>
public class RooflineTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WeightBytesPerTokenCountsTheOutputProjectionButOnlyARowOfAnUntiedEmbedding(bool tied)
    {
        // The default synthetic llama in F32: per layer 2 norms of 64, q and o 64×64, k and v 64×32 (2 KV heads),
        // gate, up and down 64×96; then the output norm and a 64×512 projection — the embedding table itself when tied.
        const long perLayer = 2 * 64 + 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 96;
        const long expected = (2 * perLayer + 64 + 64 * 512) * sizeof(float);
        var path = new SyntheticModel { TiedOutput = tied }.Build().WriteTemp();
        try
        {
            using var model = TransformerModel.Load(path);
            Assert.Equal(expected, model.WeightBytesPerToken);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void ReadProbeStreamsWholeStepsAndReportsAFiniteRate()
    {
        using var pool = new LoomThreadPool(2);
        using var probe = new MemoryReadProbe(100_000);
        Assert.Equal(98_304, probe.Bytes); // whole 128-byte steps in each of the 64 chunks
        double rate = probe.Measure(pool, passes: 5);
        Assert.True(double.IsFinite(rate) && rate > 0, $"rate {rate}");
    }

    [Fact]
    public void ReadProbeRejectsABufferTooSmallAndUseAfterDispose()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new MemoryReadProbe(4096));
        using var pool = new LoomThreadPool(1);
        var probe = new MemoryReadProbe(1 << 20);
        Assert.Throws<ArgumentOutOfRangeException>(() => probe.Measure(pool, passes: 0));
        probe.Dispose();
        Assert.Throws<ObjectDisposedException>(() => probe.ReadOnce(pool));
    }

    /// <summary>The one median every probe and benchmark uses: the middle value, or the mean of the middle two.</summary>
    [Fact]
    public void MedianTakesTheMiddleAndLeavesItsInputAlone()
    {
        var odd = new[] { 5.0, 1.0, 3.0 };
        Assert.Equal(3.0, Loom.Core.Statistics.Median(odd));
        Assert.Equal([5.0, 1.0, 3.0], odd);
        Assert.Equal(2.5, Loom.Core.Statistics.Median(new List<double> { 4, 1, 2, 3 }));
        Assert.Throws<ArgumentException>(() => Loom.Core.Statistics.Median([]));
    }
}
