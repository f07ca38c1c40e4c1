using Loom.Training;

namespace Loom.Training.Tests;

/// <summary>The three training products against a double-precision loop, on shapes that hit every tile edge.</summary>
public sealed class MatMulTests
{
    private static float[] Random(int count, ulong seed)
    {
        var random = new DeterministicRandom(seed);
        return Enumerable.Range(0, count).Select(_ => (float)random.NextGaussian()).ToArray();
    }

    [Theory]
    [InlineData(1, 1, 1, 1)]
    [InlineData(7, 13, 5, 2)]
    [InlineData(64, 48, 40, 2)]
    [InlineData(97, 35, 19, 3)]
    [InlineData(130, 172, 64, 2)]
    public void ForwardAndBothBackwardProductsMatchAPlainLoop(int tokens, int inputs, int outputs, int threads)
    {
        float[] x = Random(tokens * inputs, 1), w = Random(outputs * inputs, 2), dy = Random(tokens * outputs, 3);

        var y = new float[tokens * outputs];
        MatMul.Forward(x, w, y, tokens, inputs, outputs, threads);
        var dx = Random(tokens * inputs, 4);
        var dxBefore = (float[])dx.Clone();
        MatMul.BackwardInput(dy, w, dx, tokens, inputs, outputs, accumulate: true, threads);
        var dw = Random(outputs * inputs, 5);
        var dwBefore = (float[])dw.Clone();
        MatMul.BackwardWeight(dy, x, dw, tokens, inputs, outputs, threads);

        for (int n = 0; n < tokens; n++)
        for (int o = 0; o < outputs; o++)
        {
            double sum = 0;
            for (int i = 0; i < inputs; i++) sum += (double)x[n * inputs + i] * w[o * inputs + i];
            Assert.Equal(sum, y[n * outputs + o], 1e-4 * Math.Sqrt(inputs));
        }
        for (int n = 0; n < tokens; n++)
        for (int i = 0; i < inputs; i++)
        {
            double sum = dxBefore[n * inputs + i];
            for (int o = 0; o < outputs; o++) sum += (double)dy[n * outputs + o] * w[o * inputs + i];
            Assert.Equal(sum, dx[n * inputs + i], 1e-4 * Math.Sqrt(outputs));
        }
        for (int o = 0; o < outputs; o++)
        for (int i = 0; i < inputs; i++)
        {
            double sum = dwBefore[o * inputs + i];
            for (int n = 0; n < tokens; n++) sum += (double)dy[n * outputs + o] * x[n * inputs + i];
            Assert.Equal(sum, dw[o * inputs + i], 1e-4 * Math.Sqrt(tokens));
        }
    }

    [Fact]
    public void ShortBuffersAreRejected()
    {
        Assert.Throws<ArgumentException>(() => MatMul.Forward(new float[5], new float[6], new float[6], 2, 3, 2, 1));
    }
}
