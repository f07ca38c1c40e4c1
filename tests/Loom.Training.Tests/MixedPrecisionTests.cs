using Loom.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Loom.Training.Tests;

/// <summary>bf16 mixed precision: the rounding, the products, and a training step against fp32 and PyTorch.</summary>
public sealed class MixedPrecisionTests(ITestOutputHelper output)
{
    [Fact]
    public void RoundingIsToNearestWithTiesToEven()
    {
        float Bits(uint bits) => BitConverter.UInt32BitsToSingle(bits);
        Assert.Equal(1f, MatMul.RoundToBf16(1f));
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties go to the even mantissa, 1.
        Assert.Equal(1f, MatMul.RoundToBf16(1f + MathF.Pow(2, -8)));
        // 1 + 3·2⁻⁸ lies halfway between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶ (even).
        Assert.Equal(1f + MathF.Pow(2, -6), MatMul.RoundToBf16(1f + 3 * MathF.Pow(2, -8)));
        // Just above halfway rounds up; just below rounds down.
        Assert.Equal(Bits(0x3F81_0000), MatMul.RoundToBf16(Bits(0x3F80_8001)));
        Assert.Equal(Bits(0x3F80_0000), MatMul.RoundToBf16(Bits(0x3F80_7FFF)));
        Assert.Equal(-2.5f, MatMul.RoundToBf16(-2.5f));
        Assert.Equal(float.PositiveInfinity, MatMul.RoundToBf16(float.PositiveInfinity));
        Assert.Equal(float.PositiveInfinity, MatMul.RoundToBf16(float.MaxValue));
        Assert.True(float.IsNaN(MatMul.RoundToBf16(Bits(0x7F80_0001))));
        // Same rounding as PyTorch's cast.
        var random = new DeterministicRandom(3);
        var values = Enumerable.Range(0, 1000).Select(_ => (float)(random.NextGaussian() * Math.Pow(10, random.NextInt(9) - 4))).ToArray();
        using var rounded = tensor(values).to(ScalarType.BFloat16).to(ScalarType.Float32);
        Assert.Equal(rounded.data<float>().ToArray(), values.Select(MatMul.RoundToBf16).ToArray());
    }

    /// <summary>Every path, whether or not this CPU has its instructions (a missing one runs in software vectors, the same bits).</summary>
    public static TheoryData<string> Paths => new(Enum.GetNames<TrainingIsa>());

    /// <summary>A bf16 product is exactly the fp32 product of the rounded operands, on every path and thread count.</summary>
    [Theory]
    [MemberData(nameof(Paths))]
    public void Bf16ProductIsTheFp32ProductOfRoundedInputs(string path)
    {
        var isa = Enum.Parse<TrainingIsa>(path);
        const int rows = 37, cols = 41, depth = 300;
        var random = new DeterministicRandom(4);
        float[] a = Enumerable.Range(0, rows * depth).Select(_ => (float)random.NextGaussian()).ToArray();
        float[] b = Enumerable.Range(0, depth * cols).Select(_ => (float)random.NextGaussian()).ToArray();
        var expected = new float[rows * cols];
        MatMul.Multiply(TrainingIsa.Portable, a.Select(MatMul.RoundToBf16).ToArray(), depth, 1, b.Select(MatMul.RoundToBf16).ToArray(), 1, depth,
            expected, cols, rows, cols, depth, accumulate: false, threads: 1);
        var exact = new float[rows * cols];
        MatMul.Multiply(TrainingIsa.Portable, a, depth, 1, b, 1, depth, exact, cols, rows, cols, depth, accumulate: false, threads: 1);
        Assert.NotEqual(exact, expected);
        foreach (int threads in new[] { 1, 2 })
        {
            var actual = new float[rows * cols];
            MatMul.Multiply(isa, a, depth, 1, b, 1, depth, actual, cols, rows, cols, depth, accumulate: false, threads, TrainingPrecision.Bf16);
            Assert.Equal(expected, actual);
        }
    }

    [Fact]
    public void Bf16StepIsCloseToFp32AndToPyTorchWithBf16Products()
    {
        torch.set_num_threads(2);
        const int batch = 4, seqLen = 32;
        var (tokens, targets) = ReferenceTests.Batch(new DeterministicRandom(11), batch, seqLen, ReferenceTests.Tiny.VocabSize);
        var fp32 = ReferenceTests.RandomModel(7);
        double fp32Loss = fp32.Forward(tokens, targets, batch, seqLen);
        fp32.Backward();
        var bf16 = ReferenceTests.RandomModel(7);
        bf16.Precision = TrainingPrecision.Bf16;
        double bf16Loss = bf16.Forward(tokens, targets, batch, seqLen);
        bf16.Backward();
        using var reference = new TorchReference(ReferenceTests.RandomModel(7), bf16: true);
        using var referenceLoss = reference.Loss(tokens, targets, batch, seqLen);
        referenceLoss.backward();
        double torchLoss = referenceLoss.item<float>();

        double fromFp32 = Math.Abs(bf16Loss - fp32Loss) / fp32Loss, fromTorch = Math.Abs(bf16Loss - torchLoss) / torchLoss;
        output.WriteLine($"loss: bf16 {bf16Loss:F6}, fp32 {fp32Loss:F6} (relative {fromFp32:E2}), PyTorch bf16 products {torchLoss:F6} (relative {fromTorch:E2})");
        Assert.NotEqual(fp32Loss, bf16Loss);
        Assert.True(fromFp32 < 1e-2, $"bf16 loss {bf16Loss} vs fp32 {fp32Loss}");
        Assert.True(fromTorch < 1e-3, $"bf16 loss {bf16Loss} vs PyTorch {torchLoss}");
        double worstFp32 = 0, worstTorch = 0;
        foreach (var slot in bf16.Layout.Slots)
        {
            worstFp32 = Math.Max(worstFp32, ReferenceTests.RelativeError(slot.Of(bf16.Gradients), slot.Of(fp32.Gradients)));
            worstTorch = Math.Max(worstTorch, ReferenceTests.RelativeError(slot.Of(bf16.Gradients), reference.Gradient(slot)));
        }
        output.WriteLine($"largest gradient relative error: against fp32 {worstFp32:E2}, against PyTorch bf16 products {worstTorch:E2}");
        Assert.True(worstFp32 < 5e-2, $"bf16 gradients differ from fp32 by {worstFp32:E2}");
        Assert.True(worstTorch < 5e-2, $"bf16 gradients differ from PyTorch's by {worstTorch:E2}");
    }

    /// <summary>A weight gradient from bf16-stored inputs equals the bf16 product from the fp32 inputs, on every path.</summary>
    [Theory]
    [MemberData(nameof(Paths))]
    public void WeightGradientFromBf16InputsMatchesTheBf16Product(string path)
    {
        var isa = Enum.Parse<TrainingIsa>(path);
        const int tokens = 45, inputs = 70, outputs = 37;
        var random = new DeterministicRandom(5);
        float[] dy = Enumerable.Range(0, tokens * outputs).Select(_ => (float)random.NextGaussian()).ToArray();
        float[] x = Enumerable.Range(0, tokens * inputs).Select(_ => (float)random.NextGaussian()).ToArray();
        var half = new ushort[x.Length];
        MatMul.ToBf16(x, half);
        Assert.Equal(x.Select(v => BitConverter.SingleToUInt32Bits(MatMul.RoundToBf16(v)) >> 16), half.Select(h => (uint)h));
        foreach (int threads in new[] { 1, 2 })
        {
            // Accumulating onto a non-zero gradient, as training does.
            float[] expected = Enumerable.Range(0, outputs * inputs).Select(i => i * 0.01f).ToArray(), actual = (float[])expected.Clone();
            MatMul.Multiply(isa, dy, 1, outputs, x, inputs, 1, expected, inputs, outputs, inputs, tokens, accumulate: true, threads, TrainingPrecision.Bf16);
            MatMul.BackwardWeight(isa, dy, half, actual, tokens, inputs, outputs, threads);
            Assert.Equal(Bits(expected), Bits(actual));
        }
    }

    /// <summary>
    /// Keeping the product-only activations as bf16 changes no bit of the loss, logits or gradients (with dropout, and a
    /// second, smaller pass that reuses the buffers), and saves 2 bytes per value of those activations.
    /// </summary>
    [Fact]
    public void Bf16ActivationsGiveIdenticalResultsInLessMemory()
    {
        const int batch = 3, seqLen = 32;
        var (tokens, targets) = ReferenceTests.Batch(new DeterministicRandom(12), batch, seqLen, ReferenceTests.Tiny.VocabSize);
        Decoder Model(bool bf16Activations)
        {
            var model = ReferenceTests.RandomModel(8);
            model.Precision = TrainingPrecision.Bf16;
            model.Bf16Activations = bf16Activations;
            model.AttentionDropout = 0.1f;
            model.ResidualDropout = 0.1f;
            return model;
        }
        var compact = Model(true);
        var full = Model(false);
        foreach (var (rows, key) in new[] { (batch, 77UL), (batch - 1, 78UL) })
        {
            int n = rows * seqLen;
            double compactLoss = compact.Forward(tokens.AsSpan(0, n), targets.AsSpan(0, n), rows, seqLen, key);
            double fullLoss = full.Forward(tokens.AsSpan(0, n), targets.AsSpan(0, n), rows, seqLen, key);
            Assert.Equal(BitConverter.DoubleToInt64Bits(fullLoss), BitConverter.DoubleToInt64Bits(compactLoss));
            Assert.Equal(Bits(full.Logits.ToArray()), Bits(compact.Logits.ToArray()));
            compact.Backward();
            full.Backward();
        }
        Assert.Equal(Bits(full.Gradients), Bits(compact.Gradients));

        var s = ReferenceTests.Tiny;
        var fp32 = ReferenceTests.RandomModel(8);
        long fp32Bytes = fp32.ActivationBytes(batch, seqLen);
        Assert.Equal(fp32Bytes, full.ActivationBytes(batch, seqLen));
        long tokensTotal = batch * seqLen;
        long bf16Values = tokensTotal * (s.Layers * (3L * s.Dim + s.Hidden) + s.Dim);
        Assert.Equal(fp32Bytes - 2 * bf16Values, compact.ActivationBytes(batch, seqLen));
        output.WriteLine($"activation bytes, batch {batch} × {seqLen}: fp32 {fp32Bytes:N0}, bf16 {compact.ActivationBytes(batch, seqLen):N0}");
    }

    private static uint[] Bits(ReadOnlySpan<float> values)
    {
        var bits = new uint[values.Length];
        for (int i = 0; i < bits.Length; i++) bits[i] = BitConverter.SingleToUInt32Bits(values[i]);
        return bits;
    }
}
