using Loom.Training;
using TorchSharp;
using Xunit.Abstractions;

namespace Loom.Training.Tests;

public sealed class DeterminismTests(ITestOutputHelper output)
{
    [Fact]
    public void DropoutForwardAndBackwardMatchPyTorchWithTheSameMasks()
    {
        torch.set_num_threads(2);
        const int batch = 2, seqLen = 24;
        const ulong key = 0xD1CE;
        var model = ReferenceTests.RandomModel(3);
        model.AttentionDropout = 0.2f;
        model.ResidualDropout = 0.1f;
        var (tokens, targets) = ReferenceTests.Batch(new DeterministicRandom(4), batch, seqLen, ReferenceTests.Tiny.VocabSize);
        using var reference = new TorchReference(model);

        double loss = model.Forward(tokens, targets, batch, seqLen, key);
        double withoutDropout = new Func<double>(() =>
        {
            var plain = ReferenceTests.RandomModel(3);
            return plain.Forward(tokens, targets, batch, seqLen);
        })();
        Assert.NotEqual(withoutDropout, loss);
        model.ZeroGradients();
        model.Backward();
        using var expected = reference.Loss(tokens, targets, batch, seqLen, key, 0.2f, 0.1f);
        expected.backward();

        double lossError = Math.Abs(loss - expected.item<float>()) / expected.item<float>();
        output.WriteLine($"loss with dropout {loss:F6} (without {withoutDropout:F6}), relative error {lossError:E2}");
        Assert.True(lossError < 1e-5);
        foreach (var slot in model.Layout.Slots)
        {
            double error = ReferenceTests.RelativeError(slot.Of(model.Gradients), reference.Gradient(slot));
            Assert.True(error < 1e-4, $"{slot.Name}: gradient relative error {error:E2}");
        }
    }

    [Fact]
    public void DropoutRateIsRespected()
    {
        var mask = DropoutMask.For(123, 0, 1, 0.25f);
        int dropped = 0;
        const int count = 100_000;
        for (int i = 0; i < count; i++)
        {
            float factor = mask.Factor(i);
            if (factor == 0) dropped++;
            else Assert.Equal(1f / 0.75f, factor);
        }
        Assert.InRange(dropped / (double)count, 0.24, 0.26);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void VectorDropoutGivesTheScalarHashsFactors(int threads)
    {
        // offsets and lengths that leave parts shorter than a vector; indexes past 2^32 as late elements of big batches
        var mask = DropoutMask.For(99, 3, 2, 0.3f);
        var random = new DeterministicRandom(4);
        var source = Enumerable.Range(0, 3 * 4096 + 13).Select(_ => (float)random.NextGaussian()).ToArray();
        foreach (long first in new[] { 0L, 5L, (1L << 32) + 3 })
        {
            var factors = new float[29];
            mask.Fill(factors, first);
            var applied = (float[])source.Clone();
            mask.Apply(applied.AsSpan(0, 1001), applied.AsSpan(0, 1001), first);
            for (int i = 0; i < factors.Length; i++) Assert.Equal(mask.Factor(first + i), factors[i]);
            for (int i = 0; i < applied.Length; i++) Assert.Equal(i < 1001 ? source[i] * mask.Factor(first + i) : source[i], applied[i]);
        }

        var target = new float[source.Length];
        Layers.Dropout(mask, source, target, source.Length, threads);
        for (int i = 0; i < source.Length; i++) Assert.Equal(source[i] * mask.Factor(i), target[i]);
        var copy = new float[source.Length];
        Layers.Dropout(default, source, copy, source.Length, threads);
        Assert.Equal(source, copy);
    }

    [Theory]
    [InlineData(TrainingPrecision.Fp32)]
    [InlineData(TrainingPrecision.Bf16)]
    public void GradientsAreBitIdenticalForAnyThreadCount(TrainingPrecision precision)
    {
        var (tokens, targets) = ReferenceTests.Batch(new DeterministicRandom(9), 4, 32, ReferenceTests.Tiny.VocabSize);
        float[] Run(int threads)
        {
            var model = ReferenceTests.RandomModel(5);
            model.Threads = threads;
            model.Precision = precision;
            model.AttentionDropout = 0.1f;
            model.ResidualDropout = 0.1f;
            model.Forward(tokens, targets, 4, 32, dropoutKey: 77);
            model.Backward();
            return model.Gradients;
        }
        var single = Run(1);
        Assert.Equal(single, Run(2));
        Assert.Equal(single, Run(3));
    }
}
