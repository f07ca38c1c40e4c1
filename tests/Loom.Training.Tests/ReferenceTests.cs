using Loom.Training;
using TorchSharp;
using TorchAdamW = TorchSharp.Modules.AdamW;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Loom.Training.Tests;

/// <summary>Loom's training math against PyTorch's autograd and AdamW (TorchSharp, fp32 on the CPU).</summary>
public sealed class ReferenceTests(ITestOutputHelper output)
{
    internal static readonly ModelShape Tiny = new()
    {
        VocabSize = 256, Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, Hidden = 172, Context = 32,
    };

    /// <summary>Weights large enough (and norm gains away from 1) that every gradient is far from zero.</summary>
    internal static Decoder RandomModel(ulong seed, ModelShape? shape = null)
    {
        var model = new Decoder(shape ?? Tiny);
        var random = new DeterministicRandom(seed);
        foreach (var slot in model.Layout.Slots)
        {
            var values = slot.Of(model.Parameters);
            for (int i = 0; i < values.Length; i++)
                values[i] = slot.Decays ? (float)random.NextGaussian() * 0.15f : 1f + (float)random.NextGaussian() * 0.2f;
        }
        return model;
    }

    /// <summary>Sequences with learnable structure: arithmetic progressions mod vocab with random starts and strides.</summary>
    internal static (int[] Tokens, int[] Targets) Batch(DeterministicRandom random, int batch, int seqLen, int vocab)
    {
        var tokens = new int[batch * seqLen];
        var targets = new int[batch * seqLen];
        for (int b = 0; b < batch; b++)
        {
            int start = random.NextInt(vocab), stride = 1 + random.NextInt(7);
            for (int t = 0; t < seqLen; t++)
            {
                tokens[b * seqLen + t] = (start + t * stride) % vocab;
                targets[b * seqLen + t] = (start + (t + 1) * stride) % vocab;
            }
        }
        return (tokens, targets);
    }

    /// <summary>max |a − b| / max |b|: the error relative to the tensor's scale.</summary>
    internal static double RelativeError(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        double diff = 0, scale = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            diff = Math.Max(diff, Math.Abs(actual[i] - expected[i]));
            scale = Math.Max(scale, Math.Abs(expected[i]));
        }
        return diff / scale;
    }

    /// <remarks>200 tokens cross attention's causal row blocks (96 rows), with a partial last block.</remarks>
    [Theory]
    [InlineData(4, 32)]
    [InlineData(3, 19)]
    [InlineData(2, 200)]
    public void LossAndEveryGradientMatchPyTorch(int batch, int seqLen)
    {
        torch.set_num_threads(2);
        var model = RandomModel(7, Tiny with { Context = Math.Max(Tiny.Context, seqLen) });
        var (tokens, targets) = Batch(new DeterministicRandom(11), batch, seqLen, Tiny.VocabSize);
        using var reference = new TorchReference(model);

        double loss = model.Forward(tokens, targets, batch, seqLen);
        model.ZeroGradients();
        model.Backward();
        using var referenceLoss = reference.Loss(tokens, targets, batch, seqLen);
        referenceLoss.backward();
        double expectedLoss = referenceLoss.item<float>();

        double lossError = Math.Abs(loss - expectedLoss) / Math.Abs(expectedLoss);
        output.WriteLine($"loss {loss:R} vs PyTorch {expectedLoss:R}: relative {lossError:E2}");
        Assert.True(lossError < 1e-5, $"loss {loss} vs {expectedLoss}");

        double worst = 0;
        foreach (var slot in model.Layout.Slots)
        {
            double error = RelativeError(slot.Of(model.Gradients), reference.Gradient(slot));
            worst = Math.Max(worst, error);
            Assert.True(error < 1e-4, $"{slot.Name}: gradient relative error {error:E2}");
        }
        output.WriteLine($"largest gradient relative error over {model.Layout.Slots.Count} tensors: {worst:E2}");
    }

    [Fact]
    public void FiftyAdamWStepsWithClippingScheduleAndAccumulationFollowPyTorch()
    {
        torch.set_num_threads(2);
        const int steps = 50, microBatches = 2, batch = 4, seqLen = 32;
        const float maxNorm = 1f, weightDecay = 0.1f;
        var schedule = new LearningRateSchedule(PeakRate: 3e-3f, MinimumRate: 3e-4f, WarmupSteps: 5, TotalSteps: steps);
        var model = new Decoder(Tiny);
        model.Initialize(42);
        var optimizer = new AdamW(model.Layout, beta1: 0.9f, beta2: 0.95f, epsilon: 1e-8f, weightDecay: weightDecay);

        using var reference = new TorchReference(model);
        var referenceOptimizer = torch.optim.AdamW(
            [
                new TorchAdamW.ParamGroup(reference.Decaying, new TorchAdamW.Options { weight_decay = weightDecay }),
                new TorchAdamW.ParamGroup(reference.NotDecaying, new TorchAdamW.Options { weight_decay = 0 }),
            ], lr: schedule.At(0), beta1: 0.9, beta2: 0.95, eps: 1e-8);

        var data = new DeterministicRandom(5);
        double worst = 0;
        for (int step = 0; step < steps; step++)
        {
            float rate = schedule.At(step);
            model.ZeroGradients();
            referenceOptimizer.zero_grad();
            double loss = 0, expected = 0;
            for (int micro = 0; micro < microBatches; micro++)
            {
                var (tokens, targets) = Batch(data, batch, seqLen, Tiny.VocabSize);
                loss += model.Forward(tokens, targets, batch, seqLen) / microBatches;
                model.Backward(1f / microBatches);
                using var referenceLoss = reference.Loss(tokens, targets, batch, seqLen) / microBatches;
                referenceLoss.backward();
                expected += referenceLoss.item<float>();
            }
            GradientClipping.ClipByGlobalNorm(model.Gradients, maxNorm);
            optimizer.Update(model.Parameters, model.Gradients, rate);
            nn.utils.clip_grad_norm_(reference.Parameters, maxNorm);
            foreach (var group in referenceOptimizer.ParamGroups) group.LearningRate = rate;
            referenceOptimizer.step();

            double error = Math.Abs(loss - expected) / expected;
            worst = Math.Max(worst, error);
            if (step % 10 == 0 || step == steps - 1) output.WriteLine($"step {step}: loss {loss:F6} vs PyTorch {expected:F6} (lr {rate:E2})");
            Assert.True(error < 1e-3, $"step {step}: loss {loss} vs PyTorch {expected}");
        }
        output.WriteLine($"largest relative loss difference over {steps} steps: {worst:E2}");
    }
}
