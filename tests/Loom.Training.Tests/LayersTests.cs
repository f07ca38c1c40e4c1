using System.Numerics.Tensors;

namespace Loom.Training.Tests;

/// <summary>The vector loops of the element-wise layers give the bits of the plain formulas they replace.</summary>
public sealed class LayersTests
{
    private static float[] Random(int count, ulong seed, float scale)
    {
        var random = new DeterministicRandom(seed);
        return Enumerable.Range(0, count).Select(_ => (float)random.NextGaussian() * scale).ToArray();
    }

    [Theory]
    [InlineData(16, false)]
    [InlineData(16, true)]
    [InlineData(6, false)]
    public void RopeRotatesEveryPairAsThePairFormula(int headDim, bool inverse)
    {
        // rows farther apart than their heads, as the decoder's queries sit in rows of queries, keys and values
        const int rows = 10, seqLen = 5, heads = 3;
        int pairs = headDim / 2, rowStride = heads * headDim + 4;
        var cos = new float[seqLen * pairs];
        var sin = new float[seqLen * pairs];
        Layers.RopeTables(seqLen, headDim, 10000f, cos, sin);
        var data = Random(rows * rowStride, 11, 3f);
        var expected = (float[])data.Clone();
        float direction = inverse ? -1f : 1f;
        for (int r = 0; r < rows; r++)
        for (int h = 0; h < heads; h++)
        for (int i = 0; i < pairs; i++)
        {
            int at = r * rowStride + h * headDim + 2 * i, angle = r % seqLen * pairs + i;
            float x0 = expected[at], x1 = expected[at + 1], sn = direction * sin[angle];
            expected[at] = x0 * cos[angle] - x1 * sn;
            expected[at + 1] = x0 * sn + x1 * cos[angle];
        }

        Layers.Rope(data, rowStride, cos, sin, rows, seqLen, heads, headDim, inverse);

        Assert.Equal(expected, data);
    }

    [Fact]
    public void SwiGluGivesTheBitsOfTheLibraryCalls()
    {
        // 4096 + 13 elements: a full chunk and a short one with a scalar tail; gates up to ±200 saturate the sigmoid
        const int count = 4096 + 13;
        var gate = Random(count, 12, 4f);
        gate[5] = 200f;
        gate[6] = -200f;
        float[] up = Random(count, 13, 1f), dh = Random(count, 14, 1f);
        var sigmoid = new float[count];
        TensorPrimitives.Sigmoid(gate, sigmoid);
        var silu = new float[count];
        TensorPrimitives.Multiply(gate, sigmoid, silu);
        var expectedH = new float[count];
        TensorPrimitives.Multiply(silu, up, expectedH);
        var expectedDUp = new float[count];
        TensorPrimitives.Multiply(dh, silu, expectedDUp);
        var expectedDGate = new float[count];
        TensorPrimitives.Subtract(gate, silu, expectedDGate);
        TensorPrimitives.Add(expectedDGate, 1f, expectedDGate);
        TensorPrimitives.Multiply(expectedDGate, sigmoid, expectedDGate);
        TensorPrimitives.Multiply(expectedDGate, up, expectedDGate);
        TensorPrimitives.Multiply(expectedDGate, dh, expectedDGate);

        float[] h = new float[count], dGate = new float[count], dUp = new float[count];
        Layers.SwiGluForward(gate, up, h, count, threads: 2);
        Layers.SwiGluBackward(dh, gate, up, dGate, dUp, count, threads: 2);

        Assert.Equal(expectedH, h);
        Assert.Equal(expectedDUp, dUp);
        Assert.Equal(expectedDGate, dGate);
    }
}
